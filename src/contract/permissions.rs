//! What a contract needs of the server: the subjects its NATS user may
//! publish and subscribe to, and nothing more.
//!
//! This is the kit's knowledge of its own wire use — which JetStream API
//! subjects a stream, a consumer, a bucket's outbox relay and a deadline
//! watch touch — applied to what the service declares, so a service's
//! permissions cannot drift from what it does. `switchboard up` writes
//! them into the server's configuration; `switchboard permissions` prints
//! them for a server run elsewhere.

use super::Contract;

/// A NATS user's allow lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to (sorted, no duplicates).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to (sorted, no duplicates).
    pub subscribe: Vec<String>,
}

impl Contract {
    /// The permissions this service's user needs, in a system of `system`'s
    /// services (read only by a service that calls every routed endpoint).
    pub fn permissions(&self, system: &[Contract]) -> Permissions {
        Permissions {
            publish: self.publish_allow(system),
            subscribe: self.subscribe_allow(),
        }
    }

    /// Every endpoint subject this service calls, those it calls for being
    /// an HTTP front end included.
    pub fn called_subjects(&self, system: &[Contract]) -> Vec<String> {
        let mut calls = self.calls.clone();
        if self.calls_routed {
            calls.extend(
                system
                    .iter()
                    .flat_map(|service| &service.endpoints)
                    .filter(|endpoint| endpoint.http.is_some())
                    .map(|endpoint| endpoint.subject.clone()),
            );
        }
        calls.sort();
        calls.dedup();
        calls
    }

    fn publish_allow(&self, system: &[Contract]) -> Vec<String> {
        let mut allow: Vec<String> = self.called_subjects(system);
        // Each event subject, with the shard token the publisher adds
        // (events::partition), and bare for a client that adds none.
        for event in &self.events {
            allow.push(event.subject.clone());
            allow.push(format!("{}.*", event.subject));
        }
        if self.discovers {
            allow.push("$SRV.>".into());
        }
        if self.calls_routed {
            // A front end asks what it may call, to offer only that.
            allow.push(crate::user_info::USER_INFO_SUBJECT.into());
        }
        let buckets = self.all_buckets();
        // Account limits, read when a bucket is created; and every process
        // asks it to tell a node that lost its cluster (`connect::quorum`).
        allow.push("$JS.API.INFO".into());
        for stream in &self.streams {
            for verb in ["INFO", "CREATE", "UPDATE"] {
                allow.push(format!("$JS.API.STREAM.{verb}.{}", stream.name));
            }
        }
        if !self.consumers.is_empty() {
            // Dead letters: the DLQ stream is shared, each consumer writes its own subject.
            for verb in ["INFO", "CREATE"] {
                allow.push(format!(
                    "$JS.API.STREAM.{verb}.{}",
                    crate::events::DLQ_STREAM
                ));
            }
        }
        for consumer in &self.consumers {
            let stream = &consumer.stream;
            allow.push(format!("$JS.API.STREAM.INFO.{stream}"));
            allow.push(format!("$JS.API.STREAM.MSG.GET.{stream}"));
            for durable in consumer.durables() {
                allow.push(format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"));
                allow.push(format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}"));
                allow.push(format!("$JS.API.CONSUMER.CREATE.{stream}.{durable}.>"));
                allow.push(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"));
                allow.extend(ack_subjects(stream, &durable));
                if consumer.partitions.is_some() {
                    // A taker releases a departed owner's pin.
                    allow.push(format!("$JS.API.CONSUMER.UNPIN.{stream}.{durable}"));
                }
            }
            if consumer.partitions.is_some() {
                // The instances' heartbeats (events::consumer::group).
                allow.push(crate::events::consumer::group_subject(
                    stream,
                    &consumer.durable,
                ));
            }
            allow.push(crate::events::dead_letter_subject(
                stream,
                &consumer.durable,
            ));
        }
        for bucket in &buckets {
            // UPDATE: a bucket's stream is made to take transactions.
            for verb in ["INFO", "CREATE", "UPDATE", "MSG.GET"] {
                allow.push(format!("$JS.API.STREAM.{verb}.KV_{bucket}"));
            }
            allow.push(format!("$JS.API.DIRECT.GET.KV_{bucket}.>"));
            allow.push(format!("$KV.{bucket}.>"));
            // The outbox relay (a durable pull consumer; its ack floor is
            // read by writers) and deadline watches (ordered consumers,
            // which answer flow control and replace themselves after a gap).
            let relay = crate::outbox::RELAY_DURABLE;
            let stream = format!("KV_{bucket}");
            allow.push(format!("$JS.API.CONSUMER.CREATE.{stream}"));
            allow.push(format!("$JS.API.CONSUMER.CREATE.{stream}.>"));
            allow.push(format!("$JS.API.CONSUMER.INFO.{stream}.>"));
            allow.push(format!("$JS.API.CONSUMER.DELETE.{stream}.>"));
            allow.push(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{relay}"));
            allow.extend(ack_subjects(&stream, relay));
            allow.push(format!("$JS.FC.{stream}.>"));
            allow.push(format!("$JS.FC.*.*.{stream}.>"));
        }
        allow.sort();
        allow.dedup();
        allow
    }

    fn subscribe_allow(&self) -> Vec<String> {
        let mut allow: Vec<String> = vec!["_INBOX.>".into()];
        allow.extend(self.endpoints.iter().map(|e| e.subject.clone()));
        // Every service answers discovery for itself.
        for verb in crate::micro::Verb::ALL {
            allow.push(verb.subject(None, None));
            allow.push(verb.subject(Some(&self.name), None));
            allow.push(verb.subject(Some(&self.name), Some("*")));
        }
        if self.watches_events {
            allow.push("events.>".into());
        }
        for consumer in self.consumers.iter().filter(|c| c.partitions.is_some()) {
            allow.push(crate::events::consumer::group_subject(
                &consumer.stream,
                &consumer.durable,
            ));
        }
        allow.sort();
        allow.dedup();
        allow
    }

    /// The buckets it owns and those of its consumers (idempotency
    /// records, watermarks).
    pub fn all_buckets(&self) -> Vec<String> {
        let mut buckets = self.buckets.clone();
        for consumer in &self.consumers {
            buckets.extend(consumer.idempotency_bucket.clone());
            buckets.extend(consumer.watermark_bucket.clone());
        }
        buckets
    }
}

/// Where a consumer's acks go, in both formats nats-server uses: the
/// original `$JS.ACK.<stream>.<consumer>.…` and ADR-15's second version
/// `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.…`, which 2.14
/// servers understand and a later release makes the default — so the
/// permissions survive that upgrade.
fn ack_subjects(stream: &str, consumer: &str) -> [String; 2] {
    [
        format!("$JS.ACK.{stream}.{consumer}.>"),
        format!("$JS.ACK.*.*.{stream}.{consumer}.>"),
    ]
}

#[cfg(test)]
mod tests {
    use crate::contract::Contract;
    use crate::events::ConsumerSpec;

    #[test]
    fn acks_are_allowed_in_both_subject_formats_and_only_for_its_own_consumers() {
        let stock = Contract::new("stock", "1.0.0")
            .bucket("stock")
            .consumer(&ConsumerSpec::new("SALES", "stock-sales").filter(["events.sales.made"]));
        let publish = stock.permissions(&[]).publish;
        for allowed in [
            "$JS.ACK.SALES.stock-sales.>",
            "$JS.ACK.*.*.SALES.stock-sales.>",
            "$JS.ACK.KV_stock.outbox.>",
            "$JS.ACK.*.*.KV_stock.outbox.>",
            "dlq.SALES.stock-sales",
        ] {
            assert!(publish.iter().any(|a| a == allowed), "{allowed} missing");
        }
        assert!(!publish.iter().any(|a| a.contains("other-consumer")));
    }

    #[test]
    fn a_front_end_may_call_exactly_the_routed_endpoints() {
        #[derive(serde::Deserialize, schemars::JsonSchema)]
        struct In {}
        #[derive(serde::Serialize, schemars::JsonSchema)]
        struct Out {}
        const ROUTED: crate::contract::EndpointContract<In, Out> =
            crate::contract::EndpointContract::new("shop.buy", "Buy").http("POST", "/buy", 200);
        const INTERNAL: crate::contract::EndpointContract<In, Out> =
            crate::contract::EndpointContract::new("shop.settle", "Settle");
        let shop = Contract::new("shop", "1.0.0")
            .endpoint(&ROUTED)
            .endpoint(&INTERNAL);
        let front = Contract::new("front", "1.0.0")
            .calls_routed_endpoints()
            .discovers();
        let publish = front.permissions(&[shop.clone(), front.clone()]).publish;
        assert!(publish.contains(&"shop.buy".to_owned()));
        assert!(!publish.contains(&"shop.settle".to_owned()));
        let subscribe = shop.permissions(&[]).subscribe;
        assert!(subscribe.contains(&"shop.settle".to_owned()));
        assert!(subscribe.contains(&"$SRV.PING.shop".to_owned()));
    }
}

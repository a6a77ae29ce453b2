//! The routing table, learned from discovery — and who may claim a route.
//!
//! Every endpoint whose `$SRV.INFO` metadata carries `http_method` and
//! `http_path` becomes a route. Path templates like `/orders/{id}/cancel`
//! match segment by segment; `{name}` segments fill the request field of
//! the same name.
//!
//! Anyone allowed to answer `$SRV.INFO` can announce a route, so a claim is
//! taken only by rule, never by the order discovery answers in:
//!
//! 1. the gateway may call the endpoint's subject (its NATS user may
//!    publish to it: a route it lists, it can serve);
//! 2. the endpoint's subject is in its service's namespace (the subject's
//!    first token is the service's name — what the derived permissions
//!    let that service subscribe to);
//! 3. a route declared in a contract (`switchboard up` passes the declared
//!    owners, [`RouteOwners`]) is taken only by its declared service;
//! 4. of several services claiming an undeclared route, the one that held
//!    it keeps it (also while it is down: its route answers 503), else the
//!    first by name.
//!
//! Every refused claim is returned ([`RefusedClaim`]) for the gateway to
//! log once.

use std::collections::{BTreeMap, BTreeSet};

use switchboard::discovery::InstanceInfo;
use switchboard::service::{
    DESCRIPTION, HTTP_METHOD, HTTP_PATH, HTTP_STATUS, REQUEST_SCHEMA, RESPONSE_SCHEMA,
};

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// HTTP method, upper case.
    pub method: String,
    /// The path template, e.g. `/orders/{id}`.
    pub path: String,
    /// NATS subject of the endpoint.
    pub subject: String,
    /// Service name.
    pub service: String,
    /// Success status (200 unless declared).
    pub status: u16,
    /// Endpoint description.
    pub description: String,
    /// JSON Schema of the request, if published.
    pub request_schema: Option<serde_json::Value>,
    /// JSON Schema of the response, if published.
    pub response_schema: Option<serde_json::Value>,
}

/// A route's identity: method and path template.
type RouteKey = (String, String);

impl Route {
    fn key(&self) -> RouteKey {
        (self.method.clone(), self.path.clone())
    }
}

/// The declared owner of each route, from the contracts of the services
/// `switchboard up` runs (`"POST /things" → "things"`): a route declared
/// there is taken from nobody else. Empty when the gateway runs alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteOwners {
    declared: BTreeMap<RouteKey, String>,
}

impl RouteOwners {
    /// Parses the JSON object `{"METHOD /path": "service", …}` of
    /// [`switchboard::app::ROUTE_OWNERS_ENV`].
    ///
    /// # Errors
    ///
    /// A message saying what is malformed.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let raw: BTreeMap<String, String> =
            serde_json::from_str(json).map_err(|e| format!("not a JSON object of strings: {e}"))?;
        let mut owners = RouteOwners::default();
        for (route, service) in raw {
            let (method, path) = route
                .split_once(' ')
                .ok_or_else(|| format!("{route:?} is not \"METHOD /path\""))?;
            owners.declare(method, path, &service);
        }
        Ok(owners)
    }

    /// Declares `service` the owner of `method path`.
    pub fn declare(&mut self, method: &str, path: &str, service: &str) {
        self.declared
            .insert((method.to_uppercase(), path.to_owned()), service.to_owned());
    }

    fn owner(&self, key: &RouteKey) -> Option<&str> {
        self.declared.get(key).map(String::as_str)
    }
}

/// A claim on a route that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RefusedClaim {
    /// The claiming service.
    pub service: String,
    /// HTTP method, upper case.
    pub method: String,
    /// The path template claimed.
    pub path: String,
    /// The endpoint's subject.
    pub subject: String,
    /// Why, in words.
    pub reason: String,
}

/// All routes, most specific first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table from every instance's INFO answer, by the rules of
    /// the module docs: `previous` is the table in use (its holders keep
    /// their routes, and a service absent now keeps its routes — they answer
    /// 503 until it is back —, while a service present is authoritative for
    /// its own). A claim whose subject `may_call` refuses (the gateway's
    /// NATS user may not publish to it) is refused before any other rule,
    /// so it cannot block a claim the gateway can serve. The result does not
    /// depend on the order of `instances`.
    pub fn resolve(
        instances: &[InstanceInfo],
        owners: &RouteOwners,
        previous: &RouteTable,
        may_call: impl Fn(&str) -> bool,
    ) -> (Self, Vec<RefusedClaim>) {
        let mut refused = BTreeSet::new();
        // Each service's claims, one per route: of several instances (a
        // rolling deploy), the newest version's.
        let mut claims: BTreeMap<RouteKey, BTreeMap<String, (Vec<u64>, Route)>> = BTreeMap::new();
        let present: BTreeSet<&str> = instances.iter().map(|i| i.name.as_str()).collect();
        for instance in instances {
            for endpoint in &instance.endpoints {
                let Some(route) = claimed_route(instance, endpoint) else {
                    continue;
                };
                let refuse = |reason: String| RefusedClaim {
                    service: route.service.clone(),
                    method: route.method.clone(),
                    path: route.path.clone(),
                    subject: route.subject.clone(),
                    reason,
                };
                if !may_call(&route.subject) {
                    refused.insert(refuse(
                        "the gateway's NATS user may not call it (its permissions come from \
                         the contracts `switchboard up` read)"
                            .to_owned(),
                    ));
                    continue;
                }
                if route.subject.split('.').next() != Some(instance.name.as_str()) {
                    refused.insert(refuse(format!(
                        "its subject {} is not in the service's namespace ({}.…)",
                        route.subject, instance.name
                    )));
                    continue;
                }
                if let Some(owner) = owners.owner(&route.key())
                    && owner != instance.name
                {
                    refused.insert(refuse(format!("the route is declared by {owner}")));
                    continue;
                }
                let version = version_key(&instance.version);
                let by_service = claims.entry(route.key()).or_default();
                match by_service.get(&instance.name) {
                    Some((held, known)) if (held, &known.subject) >= (&version, &route.subject) => {
                    }
                    _ => {
                        by_service.insert(instance.name.clone(), (version, route));
                    }
                }
            }
        }
        let holders: BTreeMap<RouteKey, &Route> =
            previous.routes.iter().map(|r| (r.key(), r)).collect();
        let mut routes = Vec::new();
        for (key, mut by_service) in claims {
            let holder = holders.get(&key).map(|r| r.service.as_str());
            // Only the declared owner is left to claim a declared route.
            let declared = owners.owner(&key).is_some();
            // The holder keeps its route while it claims it or is absent.
            let winner = match holder {
                Some(h) if by_service.contains_key(h) => h.to_owned(),
                Some(h) if !declared && !present.contains(h) => {
                    for (_, route) in by_service.values() {
                        refused.insert(taken(route, h));
                    }
                    continue;
                }
                _ => match by_service.keys().next() {
                    Some(first) => first.clone(),
                    None => continue,
                },
            };
            if let Some((_, route)) = by_service.remove(&winner) {
                for (_, other) in by_service.values() {
                    refused.insert(taken(other, &winner));
                }
                routes.push(route);
            }
        }
        // Routes of absent services stay, unless their key was claimed by
        // their declared owner (who, present now, rules).
        let claimed: BTreeSet<RouteKey> = routes.iter().map(Route::key).collect();
        routes.extend(
            previous
                .routes
                .iter()
                .filter(|r| !present.contains(r.service.as_str()) && !claimed.contains(&r.key()))
                .cloned(),
        );
        (RouteTable::sorted(routes), refused.into_iter().collect())
    }

    fn sorted(mut routes: Vec<Route>) -> Self {
        // Literal segments beat parameters: `/users/{id}/notifications`
        // is tried before anything shorter or more generic.
        routes.sort_by_key(|r| {
            let params = r.path.split('/').filter(|s| s.starts_with('{')).count();
            (
                std::cmp::Reverse(r.path.split('/').count()),
                params,
                r.path.clone(),
            )
        });
        routes.dedup_by(|a, b| a.path == b.path && a.method == b.method);
        RouteTable { routes }
    }

    /// Every route.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for `method` and `path`, with its path parameters; or,
    /// when only the method differs, the allowed methods (for a 405).
    pub fn find(&self, method: &str, path: &str) -> Lookup<'_> {
        let mut allowed = Vec::new();
        for route in &self.routes {
            if let Some(params) = match_path(&route.path, path) {
                if route.method == method {
                    return Lookup::Found(route, params);
                }
                allowed.push(route.method.clone());
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(allowed)
        }
    }
}

/// The route an endpoint of `instance` claims, if its metadata names one.
fn claimed_route(
    instance: &InstanceInfo,
    endpoint: &switchboard::micro::EndpointInfo,
) -> Option<Route> {
    let metadata = endpoint.metadata.as_ref()?;
    let (method, path) = (metadata.get(HTTP_METHOD)?, metadata.get(HTTP_PATH)?);
    let schema = |key: &str| metadata.get(key).and_then(|s| serde_json::from_str(s).ok());
    Some(Route {
        method: method.to_uppercase(),
        path: path.clone(),
        subject: endpoint.subject.clone(),
        service: instance.name.clone(),
        status: metadata
            .get(HTTP_STATUS)
            .and_then(|s| s.parse().ok())
            .unwrap_or(200),
        description: metadata.get(DESCRIPTION).cloned().unwrap_or_default(),
        request_schema: schema(REQUEST_SCHEMA),
        response_schema: schema(RESPONSE_SCHEMA),
    })
}

fn taken(claim: &Route, holder: &str) -> RefusedClaim {
    RefusedClaim {
        service: claim.service.clone(),
        method: claim.method.clone(),
        path: claim.path.clone(),
        subject: claim.subject.clone(),
        reason: format!("the route is held by {holder}"),
    }
}

/// A version's numeric parts (`1.10.0` → `[1, 10, 0]`), for "newest".
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Result of [`RouteTable::find`].
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A route and its path parameters.
    Found(&'a Route, BTreeMap<String, String>),
    /// The path exists with other methods.
    MethodNotAllowed(Vec<String>),
    /// No such path.
    NotFound,
}

fn match_path(template: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let template: Vec<&str> = template.trim_matches('/').split('/').collect();
    let actual: Vec<&str> = path.trim_matches('/').split('/').collect();
    if template.len() != actual.len() {
        return None;
    }
    let mut params = BTreeMap::new();
    for (t, a) in template.iter().zip(&actual) {
        match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) if !a.is_empty() => {
                params.insert(name.to_owned(), percent_decode(a)?);
            }
            Some(_) => return None,
            None if t == a => {}
            None => return None,
        }
    }
    Some(params)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(service: &str, method: &str, path: &str) -> Route {
        Route {
            method: method.into(),
            path: path.into(),
            subject: format!("{service}.x"),
            service: service.into(),
            status: 200,
            description: String::new(),
            request_schema: None,
            response_schema: None,
        }
    }

    /// One instance's INFO with endpoints `(subject, method, path)`.
    fn instance(name: &str, version: &str, endpoints: &[(&str, &str, &str)]) -> InstanceInfo {
        let endpoints: Vec<serde_json::Value> = endpoints
            .iter()
            .map(|(subject, method, path)| {
                serde_json::json!({
                    "name": subject, "subject": subject, "queue_group": "q",
                    "metadata": {HTTP_METHOD: method, HTTP_PATH: path},
                })
            })
            .collect();
        let info = serde_json::json!({
            "type": "io.nats.micro.v1.info_response", "name": name, "id": format!("{name}-{version}"),
            "version": version, "description": "", "metadata": {}, "endpoints": endpoints,
        });
        match serde_json::from_value(info) {
            Ok(info) => info,
            Err(error) => panic!("test INFO: {error}"),
        }
    }

    fn holders(table: &RouteTable) -> Vec<(String, String, String)> {
        table
            .routes()
            .iter()
            .map(|r| (r.method.clone(), r.path.clone(), r.service.clone()))
            .collect()
    }

    /// Every order of `items` (Heap's algorithm).
    fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        fn heap<T: Clone>(k: usize, items: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
            if k <= 1 {
                out.push(items.clone());
                return;
            }
            for i in 0..k {
                heap(k - 1, items, out);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                items.swap(j, k - 1);
            }
        }
        let mut out = Vec::new();
        heap(items.len(), &mut items.to_vec(), &mut out);
        out
    }

    #[test]
    fn a_foreign_claim_on_a_declared_route_never_takes_it_in_any_order() {
        let mut owners = RouteOwners::default();
        owners.declare("POST", "/parcels", "parcels");
        let parcels = instance(
            "parcels",
            "1.0.0",
            &[("parcels.create", "POST", "/parcels")],
        );
        // Another service claiming the route with its own subject, one
        // using the owner's subject, and one named like a service it is not.
        let rival = instance("aaa", "1.0.0", &[("aaa.create", "POST", "/parcels")]);
        let thief = instance("aab", "1.0.0", &[("parcels.create", "POST", "/parcels")]);
        let fresh = instance("zzz", "9.0.0", &[("zzz.create", "POST", "/parcels")]);
        let all = [parcels, rival, thief, fresh];
        for order in permutations(&all) {
            // Cold, and with the owner down after the first refresh.
            let (table, refused) =
                RouteTable::resolve(&order, &owners, &RouteTable::default(), |_| true);
            assert_eq!(
                holders(&table),
                vec![("POST".into(), "/parcels".into(), "parcels".into())]
            );
            assert_eq!(refused.len(), 3, "{refused:?}");
            let without_owner: Vec<InstanceInfo> = order
                .iter()
                .filter(|i| i.name != "parcels")
                .cloned()
                .collect();
            let (later, _) = RouteTable::resolve(&without_owner, &owners, &table, |_| true);
            assert_eq!(
                holders(&later),
                holders(&table),
                "the owner is down: its route stays"
            );
        }
        // And with no route table yet and no owner: nobody takes it.
        let (table, _) = RouteTable::resolve(&all[1..], &owners, &RouteTable::default(), |_| true);
        assert!(table.routes().is_empty(), "{:?}", holders(&table));
    }

    #[test]
    fn an_undeclared_route_stays_with_its_first_holder() {
        let owners = RouteOwners::default();
        let first = instance(
            "parcels",
            "1.0.0",
            &[("parcels.create", "POST", "/parcels")],
        );
        let second = instance("aaa", "1.0.0", &[("aaa.create", "POST", "/parcels")]);
        let (table, _) = RouteTable::resolve(
            std::slice::from_ref(&first),
            &owners,
            &RouteTable::default(),
            |_| true,
        );
        for order in permutations(&[first.clone(), second.clone()]) {
            let (next, refused) = RouteTable::resolve(&order, &owners, &table, |_| true);
            assert_eq!(holders(&next), holders(&table));
            assert_eq!(refused.len(), 1);
            assert!(refused[0].reason.contains("held by parcels"), "{refused:?}");
            // The holder down: still its route; back: still its route.
            let (down, _) =
                RouteTable::resolve(std::slice::from_ref(&second), &owners, &next, |_| true);
            assert_eq!(holders(&down), holders(&table));
        }
        // Claimed at once by two with no holder: the first by name.
        for order in permutations(&[first, second]) {
            let (table, _) = RouteTable::resolve(&order, &owners, &RouteTable::default(), |_| true);
            assert_eq!(holders(&table)[0].2, "aaa");
        }
    }

    #[test]
    fn a_service_that_is_down_keeps_its_routes_and_one_that_is_up_is_authoritative() {
        let owners = RouteOwners::default();
        let before = RouteTable::sorted(vec![
            route("users", "GET", "/users/{id}"),
            route("orders", "GET", "/orders/{id}"),
            route("orders", "POST", "/orders/old"),
        ]);
        // Discovery now sees orders (without the old endpoint) but not users.
        let now = [instance(
            "orders",
            "1.0.0",
            &[("orders.x", "GET", "/orders/{id}")],
        )];
        let (merged, _) = RouteTable::resolve(&now, &owners, &before, |_| true);
        let paths: Vec<&str> = merged.routes().iter().map(|r| r.path.as_str()).collect();
        assert!(
            paths.contains(&"/users/{id}"),
            "users is down: its route stays (503)"
        );
        assert!(
            !paths.contains(&"/orders/old"),
            "orders is up: its current endpoints rule"
        );
        assert_eq!(merged.routes().len(), 2);
    }

    #[test]
    fn a_claim_the_gateway_may_not_call_blocks_no_other() {
        // Undeclared, so "first by name" would pick `aaa` — whose subject
        // the gateway may not publish to.
        let parcels = instance(
            "parcels",
            "1.0.0",
            &[("parcels.create", "POST", "/parcels")],
        );
        let rival = instance("aaa", "1.0.0", &[("aaa.create", "POST", "/parcels")]);
        let may_call = |subject: &str| subject.starts_with("parcels.");
        let (table, refused) = RouteTable::resolve(
            &[rival, parcels],
            &RouteOwners::default(),
            &RouteTable::default(),
            may_call,
        );
        assert_eq!(holders(&table)[0].2, "parcels");
        assert!(refused[0].reason.contains("may not call"), "{refused:?}");
    }

    #[test]
    fn of_two_versions_of_one_service_the_newest_describes_the_route() {
        let mut old = instance("parcels", "1.9.0", &[("parcels.a", "GET", "/p")]);
        let new = instance("parcels", "1.10.0", &[("parcels.b", "GET", "/p")]);
        old.id = "old".into();
        for order in permutations(&[old.clone(), new.clone()]) {
            let (table, refused) = RouteTable::resolve(
                &order,
                &RouteOwners::default(),
                &RouteTable::default(),
                |_| true,
            );
            assert!(refused.is_empty());
            assert_eq!(table.routes()[0].subject, "parcels.b");
        }
    }

    #[test]
    fn declared_owners_parse_from_the_environment_form() {
        let owners = RouteOwners::from_json(r#"{"POST /parcels":"parcels"}"#);
        assert_eq!(
            owners.ok().and_then(|o| o
                .owner(&("POST".into(), "/parcels".into()))
                .map(String::from)),
            Some("parcels".to_owned())
        );
        assert!(RouteOwners::from_json(r#"{"POST":"parcels"}"#).is_err());
        assert!(RouteOwners::from_json("[]").is_err());
    }

    #[test]
    fn literal_segments_win_over_parameters() {
        let table = RouteTable::sorted(vec![
            route("users", "GET", "/users/{id}"),
            route("notifications", "GET", "/users/{user_id}/notifications"),
            route("users", "GET", "/users/me"),
        ]);
        match table.find("GET", "/users/me") {
            Lookup::Found(r, _) => assert_eq!(r.path, "/users/me"),
            other => panic!("{other:?}"),
        }
        match table.find("GET", "/users/u-1/notifications") {
            Lookup::Found(r, params) => {
                assert_eq!(r.service, "notifications");
                assert_eq!(params.get("user_id").map(String::as_str), Some("u-1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn templates_match_segment_by_segment() {
        let p = match_path("/orders/{id}/cancel", "/orders/o-1/cancel");
        assert_eq!(p.and_then(|p| p.get("id").cloned()).as_deref(), Some("o-1"));
        assert!(match_path("/orders/{id}", "/orders/o-1/cancel").is_none());
        assert!(match_path("/orders/{id}", "/orders/").is_none());
        let p = match_path("/inventory/{sku}", "/inventory/red%20mug");
        assert_eq!(
            p.and_then(|p| p.get("sku").cloned()).as_deref(),
            Some("red mug")
        );
        assert!(match_path("/inventory/{sku}", "/inventory/%zz").is_none());
    }
}

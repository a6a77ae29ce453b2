//! The `orders` binary: `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`; stops on
//! SIGINT/SIGTERM (or when `switchboard up` goes away), draining first.

switchboard::service_main!(orders::contract, orders::run);

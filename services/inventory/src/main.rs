//! The `inventory` binary: `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`; stops on
//! SIGINT/SIGTERM (or when `switchboard up` goes away), draining first.

switchboard::service_main!(inventory::contract, inventory::run);

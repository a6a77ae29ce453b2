//! The `gateway` binary: NATS from `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`;
//! HTTP on `SWITCHBOARD_HTTP_ADDR` (default 127.0.0.1:8080).

switchboard::service_main!(gateway::contract, gateway::run_from_env);

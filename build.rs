//! Whether the async-nats this kit is built against is the patched copy in
//! `vendor/async-nats` (`PATCH.md`): it says so through its `links`
//! metadata. Without it a draining service can drop requests in flight
//! (`switchboard::app::DRAIN_CONFIRMED` is false and every service says so
//! loudly when it starts), and a refused request is only noticed through
//! the connection's error events (`switchboard::refusals`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(switchboard_unpatched_async_nats)");
    if std::env::var_os("DEP_ASYNC_NATS_SWITCHBOARD_CONFIRMED_DRAIN").is_none() {
        println!("cargo::rustc-cfg=switchboard_unpatched_async_nats");
    }
    println!("cargo::rerun-if-changed=build.rs");
}

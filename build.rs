//! Whether the async-nats this kit is built against has the confirmed-drain
//! fix (`vendor/async-nats/PATCH.md`): the patched copy says so through its
//! `links` metadata. Without it a draining service can drop requests in
//! flight; `switchboard::app::DRAIN_CONFIRMED` is false and every service
//! says so loudly when it starts.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(switchboard_unconfirmed_drain)");
    if std::env::var_os("DEP_ASYNC_NATS_SWITCHBOARD_CONFIRMED_DRAIN").is_none() {
        println!("cargo::rustc-cfg=switchboard_unconfirmed_drain");
    }
    println!("cargo::rerun-if-changed=build.rs");
}

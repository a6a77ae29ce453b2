// Switchboard's patch (PATCH.md): announces the confirmed-drain fix to the
// build scripts of direct dependents (DEP_ASYNC_NATS_SWITCHBOARD_CONFIRMED_DRAIN),
// so a service built against an unpatched async-nats can say so at start.
fn main() {
    println!("cargo::metadata=confirmed_drain=1");
    println!("cargo::rerun-if-changed=build.rs");
}

//! The shutdown future every Switchboard process is given.
//!
//! Shutdown is a parameter (`run(config, shutdown)`), never a global: library
//! code waits on the future it is handed, so tests can trigger it at will.
//! [`signal`] is the one processes use: SIGINT or SIGTERM — and, under
//! `switchboard up`, the supervisor going away.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Set by `switchboard up` in each service's environment: stdin is then a
/// pipe from the supervisor, and its end-of-file means the supervisor died
/// (even by SIGKILL), so the service stops instead of living on as an orphan.
pub const SUPERVISED_ENV: &str = "SWITCHBOARD_SUPERVISED";

/// A shutdown future with a name: what [`crate::app::main`] hands a
/// service's `run`, so `run` can stay generic over `impl Future`.
pub struct Shutdown(Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl Shutdown {
    /// Wraps any shutdown future.
    pub fn new(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Shutdown(Box::pin(future))
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shutdown")
    }
}

impl Future for Shutdown {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// Resolves on the first of SIGINT, SIGTERM or (when supervised) the
/// supervisor's death.
///
/// The signal handlers are installed when this is called, not when the
/// future is first polled, so a Ctrl-C during start-up is not lost (nor does
/// it kill the process with the default action). Call it inside a runtime.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let supervised = std::env::var_os(SUPERVISED_ENV).is_some_and(|v| v == "1");
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let signals = async {
            match handlers {
                (Ok(mut int), Ok(mut term)) => tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
                    _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                },
                // Without handlers, fall back to tokio's Ctrl-C listener.
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        tokio::select! {
            () = signals => {}
            () = supervisor_gone(), if supervised => {
                tracing::warn!("supervisor went away (stdin closed); shutting down");
            }
        }
    }
}

async fn supervisor_gone() {
    // A plain thread, not tokio's stdin: tokio reads stdin on its blocking
    // pool, and a runtime waits for that read when it shuts down, so the
    // process would hang after `main` returns. This thread simply dies with
    // the process.
    let (gone, on_gone) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("supervisor-watch".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            // Anything the supervisor writes is ignored; only end-of-file matters.
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = gone.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = on_gone.await;
        }
        // Cannot watch: rely on signals alone.
        Err(_) => std::future::pending().await,
    }
}

//! Free loopback ports for test servers.

use std::net::TcpListener;

use crate::server::ServerError;

/// A port that was free a moment ago. The OS may hand it to someone else
/// before the server binds it; callers retry on [`ServerError::PortInUse`].
///
/// # Errors
///
/// When no loopback port can be bound at all.
pub fn free_port() -> Result<u16, ServerError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(ServerError::io("cannot find a free loopback port"))?;
    Ok(listener
        .local_addr()
        .map_err(ServerError::io("cannot read a bound port"))?
        .port())
}

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

/// The first of `len` consecutive loopback ports that were all free a
/// moment ago — for `up --cluster N`, whose node `i` listens on `port + i`:
/// ports picked one by one may land next to each other, and one node's
/// client port would be another's monitoring port.
///
/// # Errors
///
/// When no such block is found after many tries.
pub fn free_port_block(len: u16) -> Result<u16, ServerError> {
    for _ in 0..100 {
        let first = free_port()?;
        let Some(last) = first.checked_add(len) else {
            continue;
        };
        // Held together, so the block is checked as a whole.
        let held: Vec<TcpListener> = (first..last)
            .map_while(|port| TcpListener::bind(("127.0.0.1", port)).ok())
            .collect();
        if held.len() == usize::from(len) {
            return Ok(first);
        }
    }
    Err(ServerError::io(
        "cannot find a block of free loopback ports",
    )(std::io::Error::other(format!(
        "{len} consecutive ports"
    ))))
}

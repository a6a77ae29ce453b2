//! Free loopback ports for test servers.

use std::net::TcpListener;

use crate::server::ServerError;

/// A port that was free a moment ago. The OS may hand it to someone else
/// before the server binds it; callers retry on [`ServerError::PortInUse`].
///
/// Picked at random *outside* the kernel's ephemeral range: a port from
/// that range (what binding port 0 gives) is also what every outgoing
/// connection takes as its source port — a cluster's route connections, a
/// client's — and one of those can take it between picking and binding
/// (CI saw `up` fail with "already in use" that way). Outside the range
/// only another picker can, and the bind check below makes that rare.
///
/// # Errors
///
/// When no loopback port can be bound at all.
pub fn free_port() -> Result<u16, ServerError> {
    let (low, high) = ephemeral_range();
    for _ in 0..200 {
        let port = if low > FIRST_PICKED + 1000 {
            fastrand::u16(FIRST_PICKED..low)
        } else if high < u16::MAX - 1000 {
            fastrand::u16(high + 1..=u16::MAX)
        } else {
            break;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // No room outside the range (or all taken): whatever the OS gives.
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(ServerError::io("cannot find a free loopback port"))?;
    Ok(listener
        .local_addr()
        .map_err(ServerError::io("cannot read a bound port"))?
        .port())
}

/// Lowest port [`free_port`] picks (below are well-known and registered
/// services' habits).
const FIRST_PICKED: u16 = 10_000;

/// The kernel's range of ephemeral (source) ports; Linux's default when it
/// cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32_768, 60_999))
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

//! HTTP pieces every HTTP front end shares: live events as Server-Sent
//! Events ([`watch_events`]) and a server that sheds slow and idle clients
//! under a connection cap ([`serve`]).

mod live;
mod serve;

pub use live::{LiveError, live_events, watch_events};
pub use serve::{
    ConnectionCounts, ConnectionStats, HEADER_TIMEOUT_ENV, HttpLimits, IDLE_TIMEOUT_ENV,
    MAX_CONNECTIONS_ENV, Server, bind, serve,
};

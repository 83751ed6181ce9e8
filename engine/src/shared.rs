//! State shared by the application threads, the control shard and the data
//! shards. Everything here is either immutable after start, atomic, or an
//! `ArcSwap` snapshot: the per-message path takes no lock.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};

use crate::channels::Channels;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oracle::OracleState;
use crate::peers::PeerTable;
use crate::rpc::RpcState;
use crate::shard::ShardLink;

pub(crate) struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    /// Set once when the network starts.
    pub channels: OnceLock<Arc<Channels>>,
    pub peers: PeerTable,
    pub oracle: Arc<OracleState>,
    pub shards: Vec<ShardLink>,
    /// Accepted connections alive (handshaking or established).
    pub inbound: AtomicUsize,
    /// Dialed connections alive (connecting, handshaking or established).
    pub outbound: AtomicUsize,
    pub running: AtomicBool,
    pub rpc: RpcState,
}

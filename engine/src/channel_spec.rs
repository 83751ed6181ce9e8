//! What a registered channel is, and the table of them every shard reads.
//!
//! # Design
//! A [`ChannelSpec`] is fixed when the channel is registered: its limits,
//! its quota, the inbox its [`crate::Receiver`] takes messages from, and an
//! optional in-shard handler. [`Channels`] is the immutable table of them,
//! set once when the network starts, so the shards look channels up with
//! no lock.
//!
//! It sits below the modules that use it: [`crate::shared`] holds the table,
//! the shards deliver into its inboxes, and [`crate::channels`] (the
//! application's `Sender` / `Receiver`) sends and receives through it.
//! None of them is needed here.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use governor::Quota;
use shoal_crypto::PublicKey;

use crate::connection::{ChannelLimit, ChannelLookup};
use crate::inbox::Inbox;
use crate::metrics::ChannelMetrics;
use crate::rpc::Handler;

/// A registered channel.
pub struct ChannelSpec {
    pub id: u32,
    pub max_size: usize,
    pub compression: Option<i32>,
    pub quota: Option<Quota>,
    /// Inbound messages for the [`crate::Receiver`] (shards push, see
    /// [`crate::inbox`]).
    pub(crate) inbox: Inbox<(PublicKey, Bytes)>,
    /// A shard holds input this channel's full receiver refused (and paused
    /// the connection): the receiver asks the shards to resume once it takes
    /// a message.
    pub(crate) input_held: AtomicBool,
    pub(crate) metrics: ChannelMetrics,
    /// In-shard handler, set before the network starts.
    pub(crate) handler: OnceLock<Handler>,
}

/// Every registered channel (immutable once the network runs).
#[derive(Default)]
pub struct Channels {
    /// Looked up for every received message (foldhash: channel ids are the
    /// application's, a peer only picks which one to look up).
    pub(crate) map: HashMap<u32, Arc<ChannelSpec>, foldhash::fast::RandomState>,
    /// Stream channels and their listeners' queues.
    pub(crate) streams: HashMap<u32, Arc<crate::inbox::Inbox<crate::streams::IncomingStream>>>,
}

impl Channels {
    pub fn get(&self, id: u32) -> Option<&Arc<ChannelSpec>> {
        self.map.get(&id)
    }
}

impl ChannelLookup for Channels {
    fn limit(&self, channel: u32) -> Option<ChannelLimit> {
        self.map.get(&channel).map(|c| ChannelLimit {
            max_size: c.max_size,
        })
    }
}

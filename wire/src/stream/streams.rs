//! [`Streams`]: every stream of one connection, and the connection-level
//! credit they share. See the module docs of [`super`] for the design.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};

use super::recv::{Arrival, RecvHalf};
use super::send::{SendHalf, SendState};
use super::{
    max_data_payload, Event, OpenError, ReadError, ReadOutcome, Side, StreamConfig, StreamId,
    StreamRecord, Violation, WriteError,
};
use crate::message::CloseReason;

/// One stream: both halves and what it has queued.
#[derive(Debug)]
struct Stream {
    send: SendHalf,
    recv: RecvHalf,
    /// Our `Open` is still to be sent (streams we opened).
    open_pending: Option<u32>,
    /// Our `Stop` (its code) is still to be sent.
    stop_pending: Option<u32>,
    /// In [`Streams::control`] / [`Streams::sendable`] / [`Streams::blocked`].
    in_control: bool,
    in_sendable: bool,
    in_blocked: bool,
}

/// The peer's announced limits.
#[derive(Debug, Clone, Copy)]
struct PeerLimits {
    stream_window: u64,
}

/// Where an id stands.
enum Lookup {
    Live,
    /// Opened once and released since.
    Closed,
    /// Never opened.
    Unknown,
}

/// All streams of one connection (see the module docs).
#[derive(Debug)]
pub struct Streams {
    side: Side,
    cfg: StreamConfig,
    streams: HashMap<StreamId, Stream>,

    // Streams the peer opens.
    next_peer_index: u64,
    /// The peer may open indices below this.
    peer_streams_granted: u64,
    streams_credit_pending: bool,

    // Streams we open.
    next_local_index: u64,
    /// The peer lets us open indices below this.
    local_streams_allowed: u64,
    local_open: u64,
    open_refused: bool,

    // Connection credit we grant.
    conn_received: u64,
    conn_consumed: u64,
    conn_max: u64,
    conn_credit_pending: bool,
    limits_sent: bool,

    // Connection credit we were granted.
    peer_limits: Option<PeerLimits>,
    conn_send_max: u64,
    /// Bytes sent or pending, all streams: what counts against the peer's
    /// connection credit.
    conn_committed: u64,
    /// Bytes accepted by `write` and not yet handed out.
    pending_total: u64,

    control: VecDeque<StreamId>,
    sendable: VecDeque<StreamId>,
    blocked: VecDeque<StreamId>,
    events: VecDeque<Event>,
    lost: Option<CloseReason>,
}

impl Streams {
    /// The streams of a new connection on which we are `side`. `cfg` must
    /// have passed [`StreamConfig::validate`]. Our `Limits` record is the
    /// first thing [`Streams::poll_transmit`] hands out.
    pub fn new(side: Side, cfg: StreamConfig) -> Self {
        Self {
            side,
            cfg,
            streams: HashMap::new(),
            next_peer_index: 0,
            peer_streams_granted: cfg.max_streams,
            streams_credit_pending: false,
            next_local_index: 0,
            local_streams_allowed: 0,
            local_open: 0,
            open_refused: false,
            conn_received: 0,
            conn_consumed: 0,
            conn_max: cfg.connection_window,
            conn_credit_pending: false,
            limits_sent: false,
            peer_limits: None,
            conn_send_max: 0,
            conn_committed: 0,
            pending_total: 0,
            control: VecDeque::new(),
            sendable: VecDeque::new(),
            blocked: VecDeque::new(),
            events: VecDeque::new(),
            lost: None,
        }
    }

    // ---- Getters ---------------------------------------------------------

    /// Our side of the connection.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Why the streams were failed, once [`Streams::close_all`] ran.
    pub fn lost(&self) -> Option<CloseReason> {
        self.lost
    }

    /// Streams alive (either half not yet ended and observed).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Whether the peer's `Limits` arrived (before, [`Streams::open`] is
    /// refused).
    pub fn peer_limits_known(&self) -> bool {
        self.peer_limits.is_some()
    }

    /// Received bytes buffered for the application, all streams.
    pub fn buffered_bytes(&self) -> u64 {
        self.streams
            .values()
            .map(|s| s.recv.buffered() as u64)
            .sum()
    }

    /// Bytes accepted by `write` and not yet handed out, all streams.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_total
    }

    /// True when [`Streams::poll_transmit`] has a record to give (with a
    /// large enough budget).
    pub fn has_transmit(&self) -> bool {
        self.lost.is_none()
            && (!self.limits_sent
                || self.conn_credit_pending
                || self.streams_credit_pending
                || !self.control.is_empty()
                || !self.sendable.is_empty())
    }

    fn lookup(&self, id: StreamId) -> Lookup {
        if self.streams.contains_key(&id) {
            return Lookup::Live;
        }
        let next = if id.initiator() == self.side {
            self.next_local_index
        } else {
            self.next_peer_index
        };
        if id.index() < next {
            Lookup::Closed
        } else {
            Lookup::Unknown
        }
    }

    // ---- Mutators (the application's calls) ------------------------------

    /// Opens a stream on `channel`. Refused while the peer's stream credit
    /// or our own `max_streams` is used up ([`Event::CanOpen`] follows once
    /// a stream closes or the peer grants more).
    pub fn open(&mut self, channel: u32) -> Result<StreamId, OpenError> {
        if let Some(reason) = self.lost {
            return Err(OpenError::ConnectionLost(reason));
        }
        let (Some(limits), true) = (
            self.peer_limits,
            self.local_open < self.cfg.max_streams
                && self.next_local_index < self.local_streams_allowed,
        ) else {
            self.open_refused = true;
            return Err(OpenError::TooManyStreams);
        };
        let id =
            StreamId::new(self.side, self.next_local_index).ok_or(OpenError::TooManyStreams)?;
        self.next_local_index += 1;
        self.local_open += 1;
        let mut s = Stream::new(limits.stream_window, self.cfg.stream_window);
        s.open_pending = Some(channel);
        self.streams.insert(id, s);
        self.queue_control(id);
        Ok(id)
    }

    /// Accepts up to `data.len()` bytes for `id`, as many as the stream's
    /// and the connection's credit and the send buffer allow.
    /// [`WriteError::Blocked`] when none fit ([`Event::Writable`] follows).
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, WriteError> {
        let conn_room = self.conn_send_max.saturating_sub(self.conn_committed);
        let buf_room = self.cfg.send_buffer.saturating_sub(self.pending_total);
        let s = self.send_half(id)?;
        s.send.check_writable()?;
        if data.is_empty() {
            return Ok(0);
        }
        let room = s.send.room().min(conn_room).min(buf_room);
        if room == 0 {
            s.send.blocked = true;
            self.queue_blocked(id);
            return Err(WriteError::Blocked);
        }
        let n = usize::try_from(room).map_or(data.len(), |r| r.min(data.len()));
        s.send
            .pending
            .extend_from_slice(data.get(..n).unwrap_or_default());
        self.conn_committed += n as u64;
        self.pending_total += n as u64;
        self.queue_sendable(id);
        Ok(n)
    }

    /// Ends our half of `id` cleanly once the pending bytes are out.
    pub fn finish(&mut self, id: StreamId) -> Result<(), WriteError> {
        let s = self.send_half(id)?;
        s.send.check_writable()?;
        s.send.state = SendState::Finishing;
        self.queue_sendable(id);
        Ok(())
    }

    /// Abandons our half of `id`: pending bytes are dropped and the peer's
    /// reads fail with [`ReadError::Reset`]`(code)`.
    pub fn reset(&mut self, id: StreamId, code: u32) -> Result<(), WriteError> {
        let s = self.send_half(id)?;
        match s.send.state {
            SendState::Open | SendState::Finishing => {}
            _ => return Err(s.send.check_writable().err().unwrap_or(WriteError::Closed)),
        }
        let dropped = s.send.reset(code, None);
        self.drop_pending(dropped);
        self.queue_control(id);
        Ok(())
    }

    /// Stops reading `id`: buffered bytes are dropped, arriving ones
    /// discarded, and the peer's writes fail with
    /// [`WriteError::Stopped`]`(code)`.
    pub fn stop(&mut self, id: StreamId, code: u32) -> Result<(), ReadError> {
        if let Some(reason) = self.lost {
            return Err(ReadError::ConnectionLost(reason));
        }
        let s = self.streams.get_mut(&id).ok_or(ReadError::UnknownStream)?;
        let (freed, send_stop) = s.recv.stop()?;
        if send_stop {
            s.stop_pending = Some(code);
            self.queue_control(id);
        }
        self.consumed(freed);
        self.maybe_release(id);
        Ok(())
    }

    /// Reads buffered bytes of `id` into `out`: [`ReadOutcome::Data`], or
    /// [`ReadOutcome::Finished`] once the peer's end was read.
    /// [`ReadError::Blocked`] when nothing is buffered yet
    /// ([`Event::Readable`] follows).
    pub fn read(&mut self, id: StreamId, out: &mut [u8]) -> Result<ReadOutcome, ReadError> {
        let max = out.len();
        self.read_with(id, max, |src| {
            if let Some(dst) = out.get_mut(..src.len()) {
                dst.copy_from_slice(&src);
            }
        })
    }

    /// [`Streams::read`] without a copy: at most `max` buffered bytes as a
    /// slice of the stream's buffer (empty with [`ReadOutcome::Finished`]).
    pub fn read_bytes(
        &mut self,
        id: StreamId,
        max: usize,
    ) -> Result<(ReadOutcome, Bytes), ReadError> {
        let mut got = Bytes::new();
        let outcome = self.read_with(id, max, |b| got = b)?;
        Ok((outcome, got))
    }

    fn read_with(
        &mut self,
        id: StreamId,
        max: usize,
        copy: impl FnOnce(Bytes),
    ) -> Result<ReadOutcome, ReadError> {
        if let Some(reason) = self.lost {
            return Err(ReadError::ConnectionLost(reason));
        }
        let s = self.streams.get_mut(&id).ok_or(ReadError::UnknownStream)?;
        let result = s.recv.read_with(max, copy);
        if s.recv.credit_pending {
            self.queue_control(id);
        }
        let result = result.map(|(outcome, n)| {
            self.consumed(n);
            outcome
        });
        self.maybe_release(id);
        result
    }

    /// Fails every stream with `reason` (the connection is gone): each live
    /// stream gets an [`Event::Lost`] and every later call
    /// `ConnectionLost(reason)`. Sticky; a second call does nothing.
    pub fn close_all(&mut self, reason: CloseReason) {
        if self.lost.is_some() {
            return;
        }
        self.lost = Some(reason);
        let mut ids: Vec<StreamId> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        self.events.clear();
        self.events
            .extend(ids.into_iter().map(|id| Event::Lost { id, reason }));
        self.streams = HashMap::new();
        self.control = VecDeque::new();
        self.sendable = VecDeque::new();
        self.blocked = VecDeque::new();
        self.pending_total = 0;
    }

    fn send_half(&mut self, id: StreamId) -> Result<&mut Stream, WriteError> {
        if let Some(reason) = self.lost {
            return Err(WriteError::ConnectionLost(reason));
        }
        self.streams.get_mut(&id).ok_or(WriteError::UnknownStream)
    }

    // ---- Input -------------------------------------------------------------

    /// One stream record from the peer. A [`Violation`] fails every stream
    /// ([`Streams::close_all`] with `ProtocolViolation`) and the connection
    /// is to be closed; records after that are ignored.
    pub fn handle_record(&mut self, rec: StreamRecord) -> Result<(), Violation> {
        if self.lost.is_some() {
            return Ok(());
        }
        let result = self.apply(rec);
        if result.is_err() {
            self.close_all(CloseReason::ProtocolViolation);
        }
        result
    }

    fn apply(&mut self, rec: StreamRecord) -> Result<(), Violation> {
        let limits = match (&rec, self.peer_limits) {
            (
                StreamRecord::Limits {
                    stream_window,
                    connection_window,
                    max_streams,
                },
                None,
            ) => {
                self.peer_limits = Some(PeerLimits {
                    stream_window: *stream_window,
                });
                self.conn_send_max = *connection_window;
                self.local_streams_allowed = *max_streams;
                self.can_open();
                return Ok(());
            }
            (StreamRecord::Limits { .. }, Some(_)) => return Err(Violation::DuplicateLimits),
            (_, None) => return Err(Violation::LimitsMissing),
            (_, Some(l)) => l,
        };
        match rec {
            StreamRecord::Limits { .. } => Ok(()),
            StreamRecord::Open { id, channel } => self.on_open(id, channel, limits),
            StreamRecord::Data {
                id,
                offset,
                payload,
            } => self.on_data(id, offset, &payload),
            StreamRecord::Finish { id, final_size } => {
                let s = self.sender_record_target(id)?;
                if s.recv.on_finish(id, final_size)? {
                    self.events.push_back(Event::Finished { id });
                }
                self.maybe_release(id);
                Ok(())
            }
            StreamRecord::Reset {
                id,
                code,
                final_size,
            } => {
                let s = self.sender_record_target(id)?;
                let (freed, tell) = s.recv.on_reset(id, code, final_size)?;
                self.consumed(freed);
                if tell {
                    self.events.push_back(Event::Reset { id, code });
                }
                self.maybe_release(id);
                Ok(())
            }
            StreamRecord::Stop { id, code } => {
                let Some(s) = self.receiver_record_target(id)? else {
                    return Ok(());
                };
                if matches!(s.send.state, SendState::Open | SendState::Finishing) {
                    let dropped = s.send.reset(code, Some(code));
                    self.drop_pending(dropped);
                    self.queue_control(id);
                    self.events.push_back(Event::Stopped { id, code });
                }
                Ok(())
            }
            StreamRecord::StreamCredit { id, max_offset } => {
                let Some(s) = self.receiver_record_target(id)? else {
                    return Ok(());
                };
                if max_offset > s.send.max_offset {
                    s.send.max_offset = max_offset;
                    self.wake_blocked();
                }
                Ok(())
            }
            StreamRecord::ConnectionCredit { max_bytes } => {
                if max_bytes > self.conn_send_max {
                    self.conn_send_max = max_bytes;
                    self.wake_blocked();
                }
                Ok(())
            }
            StreamRecord::StreamsCredit { max_streams } => {
                if max_streams > self.local_streams_allowed {
                    self.local_streams_allowed = max_streams;
                    self.can_open();
                }
                Ok(())
            }
        }
    }

    fn on_open(&mut self, id: StreamId, channel: u32, limits: PeerLimits) -> Result<(), Violation> {
        if id.initiator() == self.side || id.index() != self.next_peer_index {
            return Err(Violation::UnexpectedOpen(id));
        }
        if id.index() >= self.peer_streams_granted {
            return Err(Violation::TooManyStreams(id));
        }
        self.next_peer_index += 1;
        self.streams.insert(
            id,
            Stream::new(limits.stream_window, self.cfg.stream_window),
        );
        self.events.push_back(Event::Opened { id, channel });
        Ok(())
    }

    fn on_data(&mut self, id: StreamId, offset: u64, payload: &[u8]) -> Result<(), Violation> {
        let len = payload.len() as u64;
        let conn_max = self.conn_max;
        let conn_end = self
            .conn_received
            .checked_add(len)
            .filter(|end| *end <= conn_max);
        let s = self.sender_record_target(id)?;
        let Some(conn_end) = conn_end else {
            return Err(Violation::ConnectionCreditExceeded);
        };
        let arrival = s.recv.on_data(id, offset, payload)?;
        let tell = match arrival {
            Arrival::Buffered => std::mem::take(&mut s.recv.wants_readable),
            Arrival::Discarded => false,
        };
        self.conn_received = conn_end;
        match arrival {
            Arrival::Buffered if tell => self.events.push_back(Event::Readable { id }),
            Arrival::Buffered => {}
            Arrival::Discarded => self.consumed(len),
        }
        Ok(())
    }

    /// The stream a `Data`, `Finish` or `Reset` is for. Over an ordered
    /// transport the peer cannot send one for a stream it never opened
    /// ([`Violation::UnknownStream`]) nor after its own end, which a
    /// released stream is past ([`Violation::ClosedStream`]).
    fn sender_record_target(&mut self, id: StreamId) -> Result<&mut Stream, Violation> {
        match self.lookup(id) {
            Lookup::Live => self
                .streams
                .get_mut(&id)
                .ok_or(Violation::UnknownStream(id)),
            Lookup::Closed => Err(Violation::ClosedStream(id)),
            Lookup::Unknown => Err(Violation::UnknownStream(id)),
        }
    }

    /// The stream a `Stop` or `StreamCredit` is for; `None` for a released
    /// stream (the peer sent it before our end reached it: ignored).
    fn receiver_record_target(&mut self, id: StreamId) -> Result<Option<&mut Stream>, Violation> {
        match self.lookup(id) {
            Lookup::Live => Ok(self.streams.get_mut(&id)),
            Lookup::Closed => Ok(None),
            Lookup::Unknown => Err(Violation::UnknownStream(id)),
        }
    }

    // ---- Output ------------------------------------------------------------

    /// The next record to send, whose whole encoding
    /// ([`StreamRecord::record_len`]) fits `budget` bytes; `None` when
    /// nothing is queued or the next record does not fit. Control records
    /// (limits, credit, open, stop, reset) come first, then one `Data`
    /// record (at most `max_record_payload`) or `Finish`, round-robin over
    /// the streams with something to send.
    pub fn poll_transmit(&mut self, budget: usize) -> Option<StreamRecord> {
        if self.lost.is_some() {
            return None;
        }
        let Some(rec) = self.next_control() else {
            return self.next_data(budget);
        };
        if rec.record_len() > budget {
            // Nothing was marked sent (`next_control` only peeks): the
            // connection asks again with a fresh frame.
            return None;
        }
        self.sent_control(&rec);
        Some(rec)
    }

    /// The next control record, not yet marked sent.
    fn next_control(&mut self) -> Option<StreamRecord> {
        if !self.limits_sent {
            return Some(StreamRecord::Limits {
                stream_window: self.cfg.stream_window,
                connection_window: self.cfg.connection_window,
                max_streams: self.cfg.max_streams,
            });
        }
        if self.conn_credit_pending {
            return Some(StreamRecord::ConnectionCredit {
                max_bytes: self.conn_max,
            });
        }
        if self.streams_credit_pending {
            return Some(StreamRecord::StreamsCredit {
                max_streams: self.peer_streams_granted,
            });
        }
        while let Some(&id) = self.control.front() {
            if let Some(s) = self.streams.get(&id) {
                if let Some(channel) = s.open_pending {
                    return Some(StreamRecord::Open { id, channel });
                }
                if s.recv.credit_pending {
                    return Some(StreamRecord::StreamCredit {
                        id,
                        max_offset: s.recv.max_offset,
                    });
                }
                if let Some(code) = s.stop_pending {
                    return Some(StreamRecord::Stop { id, code });
                }
                if let SendState::ResetPending { code, .. } = s.send.state {
                    return Some(StreamRecord::Reset {
                        id,
                        code,
                        final_size: s.send.sent,
                    });
                }
            }
            self.control.pop_front();
            if let Some(s) = self.streams.get_mut(&id) {
                s.in_control = false;
            }
        }
        None
    }

    fn sent_control(&mut self, rec: &StreamRecord) {
        match rec {
            StreamRecord::Limits { .. } => self.limits_sent = true,
            StreamRecord::ConnectionCredit { .. } => self.conn_credit_pending = false,
            StreamRecord::StreamsCredit { .. } => self.streams_credit_pending = false,
            StreamRecord::Open { id, .. } => {
                if let Some(s) = self.streams.get_mut(id) {
                    s.open_pending = None;
                }
            }
            StreamRecord::StreamCredit { id, .. } => {
                if let Some(s) = self.streams.get_mut(id) {
                    s.recv.credit_pending = false;
                }
            }
            StreamRecord::Stop { id, .. } => {
                if let Some(s) = self.streams.get_mut(id) {
                    s.stop_pending = None;
                }
            }
            StreamRecord::Reset { id, .. } => {
                let id = *id;
                if let Some(s) = self.streams.get_mut(&id) {
                    if let SendState::ResetPending { stopped, .. } = s.send.state {
                        s.send.state = SendState::ResetSent { stopped };
                    }
                }
                self.maybe_release(id);
            }
            StreamRecord::Data { .. } | StreamRecord::Finish { .. } => {}
        }
    }

    fn next_data(&mut self, budget: usize) -> Option<StreamRecord> {
        let max = max_data_payload(budget).min(self.cfg.max_record_payload);
        while let Some(id) = self.sendable.pop_front() {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.in_sendable = false;
            let live = matches!(s.send.state, SendState::Open | SendState::Finishing);
            if !live {
                continue;
            }
            if !s.send.pending.is_empty() {
                if max == 0 {
                    s.in_sendable = true;
                    self.sendable.push_front(id);
                    return None;
                }
                let (offset, payload) = s.send.take_chunk(max)?;
                let more = !s.send.pending.is_empty() || s.send.state == SendState::Finishing;
                self.pending_total -= payload.len() as u64;
                if more {
                    self.queue_sendable(id);
                }
                self.wake_blocked();
                return Some(StreamRecord::Data {
                    id,
                    offset,
                    payload,
                });
            }
            if s.send.state == SendState::Finishing {
                let rec = StreamRecord::Finish {
                    id,
                    final_size: s.send.sent,
                };
                if rec.record_len() > budget {
                    s.in_sendable = true;
                    self.sendable.push_front(id);
                    return None;
                }
                s.send.state = SendState::FinSent;
                self.maybe_release(id);
                return Some(rec);
            }
        }
        None
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- Bookkeeping -------------------------------------------------------

    fn queue_control(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.in_control {
                s.in_control = true;
                self.control.push_back(id);
            }
        }
    }

    fn queue_sendable(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.in_sendable {
                s.in_sendable = true;
                self.sendable.push_back(id);
            }
        }
    }

    fn queue_blocked(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.in_blocked {
                s.in_blocked = true;
                self.blocked.push_back(id);
            }
        }
    }

    /// Credit or room grew: every blocked writer may try again.
    fn wake_blocked(&mut self) {
        while let Some(id) = self.blocked.pop_front() {
            if let Some(s) = self.streams.get_mut(&id) {
                s.in_blocked = false;
                if std::mem::take(&mut s.send.blocked) && s.send.check_writable().is_ok() {
                    self.events.push_back(Event::Writable { id });
                }
            }
        }
    }

    /// Pending bytes dropped by a reset: they no longer count against the
    /// peer's credit nor our send buffer.
    fn drop_pending(&mut self, dropped: u64) {
        self.conn_committed -= dropped;
        self.pending_total -= dropped;
        if dropped > 0 {
            self.wake_blocked();
        }
    }

    /// Received bytes left the buffers (read or discarded): re-grant the
    /// connection window once half of it was consumed.
    fn consumed(&mut self, n: u64) {
        self.conn_consumed += n;
        let window = self.cfg.connection_window;
        let target = self.conn_consumed.saturating_add(window);
        if target.saturating_sub(self.conn_max) >= window / 2 {
            self.conn_max = target;
            self.conn_credit_pending = true;
        }
    }

    fn can_open(&mut self) {
        if std::mem::take(&mut self.open_refused) {
            self.events.push_back(Event::CanOpen);
        }
    }

    /// Forgets `id` once both halves ended and the application saw the end
    /// of its receiving half; a peer-opened stream's slot is granted again.
    fn maybe_release(&mut self, id: StreamId) {
        let done = self
            .streams
            .get(&id)
            .is_some_and(|s| s.send.is_terminal() && s.recv.is_terminal());
        if !done {
            return;
        }
        self.streams.remove(&id);
        if id.initiator() == self.side {
            self.local_open -= 1;
            self.can_open();
        } else {
            self.peer_streams_granted += 1;
            self.streams_credit_pending = true;
        }
    }
}

impl Stream {
    fn new(send_credit: u64, recv_window: u64) -> Self {
        Self {
            send: SendHalf::new(send_credit),
            recv: RecvHalf::new(recv_window),
            open_pending: None,
            stop_pending: None,
            in_control: false,
            in_sendable: false,
            in_blocked: false,
        }
    }
}

//! The frame codec: `u32` big-endian body length, then the body.
//!
//! # Design
//!
//! A frame is `len: u32 (big-endian) ‖ body[len]`. After the handshake the
//! body is sealed (ChaCha20-Poly1305 ciphertext followed by its
//! [`TAG_LEN`]-byte tag, see `shoal-crypto`); the two handshake frames carry a
//! plain `Hello` as their body. This module only delimits bodies: it never
//! looks inside them.
//!
//! [`FrameDecoder`] is a sans-IO accumulator with three verbs:
//! - **feed**: received bytes go in, either copied with
//!   [`FrameDecoder::feed`] or received straight into the decoder's own
//!   buffer, lent for one read with [`FrameDecoder::lend`] and given back
//!   with [`FrameDecoder::feed_lent`];
//! - **decode**: [`FrameDecoder::decode`] until it returns `Ok(None)`. Each
//!   complete body is split off the accumulation buffer as an owned
//!   [`BytesMut`] (no copy: it shares the allocation), so the caller can open
//!   it in place and `freeze` it into zero-copy `Bytes` for the payloads
//!   inside;
//! - **bytes wanted**: [`FrameDecoder::wanted`] says how many more bytes
//!   finish the current frame (never more than `HEADER_LEN + max_body`), and
//!   a lent buffer says how many to read into it ([`ReadBuf::want`]).
//!   [`FrameDecoder::large_body_pending`] says whether the rest of the
//!   current frame is a large body, worth receiving straight into the
//!   decoder rather than copying in.
//!
//! Which of the two ways a connection's bytes arrive is the caller's policy
//! (the engine's read plan); the decoder only makes both cheap.
//!
//! ## Reads that never reallocate
//! Large bodies are the bulk of the bytes, so the decoder arranges that each
//! one is received into an allocation of its own and never moved: a lent
//! buffer has spare capacity reserved for the read it asks for. While a body
//! of at least [`LARGE_BODY`] bytes is pending that is exactly the rest of
//! that body plus the next length prefix, so the next body starts in a fresh,
//! exactly sized allocation (the previous one usually still backs payloads
//! the application holds). Otherwise it is a batch, so many small frames
//! arrive in one read. [`FrameDecoder::feed`] copies along the same
//! boundaries, and splits complete frames off ahead of
//! [`FrameDecoder::decode`] (at most [`READY_MAX`] of them) so a received chunk
//! that spans two large frames is not appended to the first frame's buffer.
//!
//! # Security
//!
//! Provided:
//! - The length prefix is checked against `max_body` as soon as its four bytes
//!   are present and *before* anything is reserved for the body, so a peer
//!   claiming a 4 GiB frame costs four bytes of buffer, not 4 GiB.
//! - Zero-length frames are refused ([`FrameError::Empty`]): a sealed body is
//!   at least a tag, and a Hello is never empty, so an empty frame is only ever
//!   a way to make the receiver spin.
//! - Errors are sticky: once a stream is malformed the decoder keeps returning
//!   the same error; it never resynchronises on attacker-chosen bytes.
//! - [`FrameDecoder::shrink_if_idle`] releases the buffer of idle connections,
//!   so ten thousand idle peers cost ten thousand empty `BytesMut`s.
//!
//! Not provided:
//! - No authentication or integrity: that is the record cipher's job. A body
//!   returned here is attacker-controlled until it has been opened.
//! - The decoder does not limit how much a caller copies in between two calls
//!   to `decode`; a caller that feeds at most [`FrameDecoder::wanted`] (or a
//!   fixed read size) per `decode`, or reads at most [`ReadBuf::want`] into a
//!   lent buffer, keeps the buffer within `HEADER_LEN + max_body + one read`.

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Bytes of the AEAD tag at the end of every sealed body.
pub const TAG_LEN: usize = 16;
/// Default maximum body length (ciphertext + tag).
pub const DEFAULT_MAX_FRAME_BODY: usize = 64 * 1024;
/// Bodies at least this long are read into their own allocation (see the
/// module docs); shorter ones are read in batches.
pub const LARGE_BODY: usize = 16 * 1024;
/// The most a buffer lent by [`FrameDecoder::lend`] reserves for a
/// connection with nothing pending (unless the buffer already has more room).
pub const IDLE_READ: usize = 4096;
/// Complete frames split off ahead of [`FrameDecoder::decode`], at most.
pub const READY_MAX: usize = 64;

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix claims more than the maximum body length.
    #[error("frame body of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: u64, max: usize },
    /// The length prefix is zero.
    #[error("empty frame")]
    Empty,
}

/// Encodes the length prefix of a frame whose body is `body_len` bytes.
///
/// # Panics
///
/// If `body_len > u32::MAX` (a caller bug: bodies are bounded by the
/// configured maximum frame size). Use [`try_encode_header`] to check instead.
pub fn encode_header(body_len: usize) -> [u8; HEADER_LEN] {
    match u32::try_from(body_len) {
        Ok(len) => len.to_be_bytes(),
        Err(_) => panic!("frame body of {body_len} bytes does not fit a u32 length prefix"),
    }
}

/// Encodes the length prefix of a frame, refusing bodies the peer would
/// refuse: empty ones and ones longer than `max_body`.
pub fn try_encode_header(body_len: usize, max_body: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    if body_len == 0 {
        return Err(FrameError::Empty);
    }
    match u32::try_from(body_len) {
        Ok(len) if body_len <= max_body => Ok(len.to_be_bytes()),
        _ => Err(FrameError::TooLarge {
            len: body_len as u64,
            max: max_body,
        }),
    }
}

/// A [`FrameDecoder`]'s accumulation buffer, lent for one read straight
/// into its spare capacity ([`FrameDecoder::lend`]). The read appends at
/// most [`want`](Self::want) bytes to [`buf_mut`](Self::buf_mut) (the spare
/// capacity is at least that, so the read never reallocates) and changes
/// nothing else; the buffer then goes back with [`FrameDecoder::feed_lent`]
/// (dropping it instead loses what the decoder had buffered).
#[derive(Debug)]
#[must_use = "a lent buffer goes back with `FrameDecoder::feed_lent`"]
pub struct ReadBuf {
    buf: BytesMut,
    /// Bytes the read may append.
    want: usize,
    /// Length when lent: what lies beyond it was received.
    start: usize,
}

impl ReadBuf {
    /// Bytes the read may append, at most.
    pub fn want(&self) -> usize {
        self.want
    }

    /// The buffer to append to.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes appended since the buffer was lent.
    pub fn received(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (or about to parse) a length prefix.
    Header,
    /// The prefix has been consumed; waiting for this many body bytes.
    Body(usize),
}

/// Splits a byte stream into frame bodies. See the [module docs](self).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// Complete bodies split off by `feed`/`lend`, in stream order,
    /// returned by `decode` before anything in `buf`.
    ready: VecDeque<BytesMut>,
    ready_bytes: usize,
    max_body: usize,
    state: State,
    error: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder refusing bodies longer than `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            max_body,
            state: State::Header,
            error: None,
        }
    }

    /// The maximum body length this decoder accepts.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Changes the limit for every frame whose header is not decoded yet
    /// (a connection keeps it small until its handshake completes, then
    /// raises it). A frame split off ahead of `decode` passed the limit in
    /// force then; limits are only ever raised, so it passes the new one too.
    pub fn set_max_body(&mut self, max_body: usize) {
        self.max_body = max_body;
    }

    /// How many more bytes the decoder wants before the current frame is
    /// complete ([`HEADER_LEN`] when idle); never more than
    /// `HEADER_LEN + max_body`. Zero when a complete frame (or an error) is
    /// waiting for [`decode`](Self::decode).
    pub fn wanted(&self) -> usize {
        if self.error.is_some() || !self.ready.is_empty() {
            return 0;
        }
        match self.state {
            State::Body(len) => len.saturating_sub(self.buf.len()),
            State::Header => match self.peek_len() {
                None => HEADER_LEN - self.buf.len(),
                Some(Ok(len)) => (HEADER_LEN + len).saturating_sub(self.buf.len()),
                Some(Err(_)) => 0,
            },
        }
    }

    /// Copies `data` into the accumulation buffer (for callers that receive
    /// into their own buffers), cut along the boundaries a lent buffer's
    /// reads would have, so a large body is copied once into its own
    /// allocation and never moved again.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = match self.reserve_read(data.len()) {
                0 => data.len(),
                want => want.min(data.len()),
            };
            let (now, rest) = data.split_at(take);
            self.buf.extend_from_slice(now);
            data = rest;
        }
    }

    /// True while a body of at least [`LARGE_BODY`] bytes is incomplete and
    /// nothing else waits for [`decode`](Self::decode): the rest of it can be
    /// received straight into a [lent](Self::lend) buffer instead of being
    /// copied in.
    pub fn large_body_pending(&self) -> bool {
        self.error.is_none()
            && self.ready.is_empty()
            && matches!(self.state, State::Body(len) if len >= LARGE_BODY && self.buf.len() < len)
    }

    /// Lends the accumulation buffer for one read straight into its spare
    /// capacity (a synchronous `recv`, or a kernel that writes into it
    /// asynchronously, like io_uring): nothing is decoded until it comes back
    /// through [`feed_lent`](Self::feed_lent). The read may append at most
    /// [`ReadBuf::want`] bytes, for which capacity is reserved:
    /// - the rest of a pending body of at least [`LARGE_BODY`] bytes plus the
    ///   next length prefix, so the next body gets an allocation of its own;
    /// - otherwise `batch` bytes (or the rest of the pending body, if more);
    ///   with nothing pending at all, at most [`IDLE_READ`] unless the
    ///   buffer already has more room.
    ///
    /// `None` means "call `decode` first": [`READY_MAX`] frames are waiting,
    /// or the stream is in error, or the next length prefix exceeds the
    /// current limit (`decode` then reports the error, unless the limit was
    /// raised). The reservation never exceeds `HEADER_LEN + max_body` or
    /// `batch`, whichever is larger.
    pub fn lend(&mut self, batch: usize) -> Option<ReadBuf> {
        let want = self.reserve_read(batch);
        (want > 0).then(|| ReadBuf {
            start: self.buf.len(),
            want,
            buf: std::mem::take(&mut self.buf),
        })
    }

    /// Takes back a buffer from [`lend`](Self::lend), extended by what was
    /// read into it; returns how many bytes that was.
    pub fn feed_lent(&mut self, lent: ReadBuf) -> usize {
        let received = lent.received();
        let mut buf = lent.buf;
        // Nothing is fed while the buffer is out; if something was, it came
        // later in the stream.
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
        received
    }

    /// Splits complete frames off ahead of [`decode`](Self::decode), reserves
    /// spare capacity for the next read and returns its size (see
    /// [`lend`](Self::lend); zero: decode first).
    fn reserve_read(&mut self, batch: usize) -> usize {
        self.split_ahead();
        if self.error.is_some() || self.ready.len() >= READY_MAX {
            return 0;
        }
        let want = match self.state {
            State::Body(len) => {
                let rest = len.saturating_sub(self.buf.len());
                if len >= LARGE_BODY {
                    rest + HEADER_LEN
                } else {
                    batch.max(rest + HEADER_LEN)
                }
            }
            // `split_ahead` parses every complete, acceptable prefix.
            State::Header if self.buf.len() >= HEADER_LEN => return 0,
            // Nothing pending: use the room there is, but grow an idle
            // connection's buffer only to IDLE_READ on speculation (ten
            // thousand idle peers must not each hold a batch); it grows to
            // `batch` once a frame is actually arriving.
            State::Header if self.buf.is_empty() => {
                let spare = self.buf.capacity() - self.buf.len();
                batch.min(spare.max(IDLE_READ))
            }
            State::Header => batch.max(HEADER_LEN - self.buf.len()),
        };
        self.buf.reserve(want);
        want
    }

    /// Splits complete frames off into `ready` (bounded by [`READY_MAX`]).
    /// Never sets an error: a prefix the current limit refuses is left for
    /// `decode`, which applies the limit in force when it gets there.
    fn split_ahead(&mut self) {
        while self.error.is_none() && self.ready.len() < READY_MAX {
            if self.state == State::Header {
                match self.peek_len() {
                    Some(Ok(len)) => self.enter_body(len),
                    _ => return,
                }
            }
            match self.state {
                State::Body(len) if self.buf.len() >= len => {
                    self.ready_bytes += len;
                    self.ready.push_back(self.buf.split_to(len));
                    self.state = State::Header;
                }
                _ => return,
            }
        }
    }

    /// Consumes a validated length prefix and reserves room for the rest of
    /// the body and the next prefix, so a driver reading into spare capacity
    /// gets both in one read without reallocating.
    fn enter_body(&mut self, len: usize) {
        self.buf.advance(HEADER_LEN);
        self.state = State::Body(len);
        self.buf
            .reserve((len + HEADER_LEN).saturating_sub(self.buf.len()));
    }

    /// Splits off the next complete frame's body (header stripped) as an owned
    /// `BytesMut` the caller can open in place and freeze.
    ///
    /// `Ok(None)` means more bytes are needed. The length prefix is checked
    /// against `max_body` as soon as its bytes are present, before anything is
    /// reserved. Errors are sticky.
    pub fn decode(&mut self) -> Result<Option<BytesMut>, FrameError> {
        if let Some(body) = self.ready.pop_front() {
            self.ready_bytes -= body.len();
            return Ok(Some(body));
        }
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        if self.state == State::Header {
            match self.peek_len() {
                None => return Ok(None),
                Some(Err(err)) => {
                    self.error = Some(err.clone());
                    return Err(err);
                }
                // `len <= max_body` here.
                Some(Ok(len)) => self.enter_body(len),
            }
        }
        match self.state {
            State::Body(len) if self.buf.len() >= len => {
                self.state = State::Header;
                Ok(Some(self.buf.split_to(len)))
            }
            _ => Ok(None),
        }
    }

    /// Bytes received but not yet returned as part of a frame (a consumed
    /// length prefix no longer counts).
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.ready_bytes
    }

    /// Bytes allocated for buffering input.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Releases the accumulation buffer's memory when nothing is buffered
    /// (idle connections must stay small).
    pub fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.state == State::Header && self.ready.is_empty() {
            self.buf = BytesMut::new();
            self.ready = VecDeque::new();
        }
    }

    /// The length announced by a not-yet-consumed header, validated.
    fn peek_len(&self) -> Option<Result<usize, FrameError>> {
        let header: [u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        let len = u32::from_be_bytes(header);
        Some(match usize::try_from(len) {
            _ if len == 0 => Err(FrameError::Empty),
            Ok(len) if len <= self.max_body => Ok(len),
            _ => Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max_body,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = encode_header(body.len()).to_vec();
        v.extend_from_slice(body);
        v
    }

    fn drain(dec: &mut FrameDecoder) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        while let Some(body) = dec.decode()? {
            out.push(body.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn header_is_big_endian() {
        assert_eq!(encode_header(0x0102_0304), [1, 2, 3, 4]);
        assert_eq!(encode_header(5), [0, 0, 0, 5]);
    }

    #[test]
    fn try_encode_header_checks() {
        assert_eq!(try_encode_header(0, 10), Err(FrameError::Empty));
        assert_eq!(
            try_encode_header(11, 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(try_encode_header(10, 10), Ok([0, 0, 0, 10]));
    }

    #[test]
    fn single_frame_and_wanted() {
        let mut dec = FrameDecoder::new(100);
        assert_eq!(dec.wanted(), HEADER_LEN);
        dec.feed(&[0, 0]);
        assert_eq!(dec.wanted(), 2);
        assert_eq!(dec.decode(), Ok(None));
        dec.feed(&[0, 3, b'a']);
        assert_eq!(dec.wanted(), 2);
        assert_eq!(dec.decode(), Ok(None));
        assert_eq!(dec.wanted(), 2);
        dec.feed(b"bc");
        assert_eq!(dec.wanted(), 0);
        assert_eq!(dec.decode().unwrap().unwrap(), &b"abc"[..]);
        assert_eq!(dec.wanted(), HEADER_LEN);
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.decode(), Ok(None));
    }

    #[test]
    fn claims_four_gib_without_allocating() {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BODY);
        dec.feed(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(dec.wanted(), 0);
        assert_eq!(
            dec.decode(),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                max: DEFAULT_MAX_FRAME_BODY
            })
        );
        assert!(dec.capacity() < 1024 * 1024);
        // Sticky, and still nothing reserved.
        dec.feed(&[0; 16]);
        assert!(matches!(dec.decode(), Err(FrameError::TooLarge { .. })));
        assert!(dec.capacity() < 1024 * 1024);
    }

    #[test]
    fn max_accepted_max_plus_one_refused() {
        let max = 1000;
        let mut dec = FrameDecoder::new(max);
        dec.feed(&frame(&vec![7; max]));
        let body = dec.decode().unwrap().unwrap();
        assert_eq!(body.len(), max);

        let mut dec = FrameDecoder::new(max);
        dec.feed(&encode_header(max + 1));
        assert_eq!(
            dec.decode(),
            Err(FrameError::TooLarge {
                len: max as u64 + 1,
                max
            })
        );
    }

    #[test]
    fn zero_length_refused_and_sticky() {
        let mut dec = FrameDecoder::new(100);
        dec.feed(&[0, 0, 0, 0]);
        assert_eq!(dec.decode(), Err(FrameError::Empty));
        dec.feed(&frame(b"ok"));
        assert_eq!(dec.decode(), Err(FrameError::Empty));
        assert_eq!(dec.wanted(), 0);
    }

    #[test]
    fn error_after_good_frames() {
        let mut dec = FrameDecoder::new(4);
        let mut input = frame(b"ab");
        input.extend_from_slice(&frame(b"abcde"));
        dec.feed(&input);
        assert_eq!(dec.decode().unwrap().unwrap(), &b"ab"[..]);
        assert_eq!(dec.decode(), Err(FrameError::TooLarge { len: 5, max: 4 }));
    }

    #[test]
    fn shrink_if_idle_releases_memory() {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BODY);
        dec.feed(&frame(&vec![1; 60_000]));
        assert!(dec.decode().unwrap().is_some());
        dec.shrink_if_idle();
        assert_eq!(dec.capacity(), 0);
        // Not idle while a frame is half-received.
        dec.feed(&frame(&[1; 100])[..50]);
        assert_eq!(dec.decode(), Ok(None));
        let cap = dec.capacity();
        dec.shrink_if_idle();
        assert_eq!(dec.capacity(), cap);
        assert_eq!(dec.buffered(), 46);
    }

    #[test]
    fn reserves_body_after_header_check() {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BODY);
        dec.feed(&encode_header(DEFAULT_MAX_FRAME_BODY));
        assert_eq!(dec.decode(), Ok(None));
        assert!(dec.capacity() >= DEFAULT_MAX_FRAME_BODY);
        assert_eq!(dec.wanted(), DEFAULT_MAX_FRAME_BODY);
    }

    #[test]
    fn read_into_spare_capacity() {
        let mut dec = FrameDecoder::new(100);
        append(&mut dec, &frame(b"xyz"));
        assert_eq!(dec.decode().unwrap().unwrap(), &b"xyz"[..]);
    }

    /// The buffer [`FrameDecoder::lend`] would lend for `batch`, given
    /// straight back: how much to read (zero: decode first) and where the
    /// buffer starts.
    fn peek_lend(dec: &mut FrameDecoder, batch: usize) -> (usize, *const u8) {
        match dec.lend(batch) {
            Some(mut lent) => {
                let seen = (lent.want(), lent.buf_mut().as_ptr());
                assert_eq!(dec.feed_lent(lent), 0);
                seen
            }
            None => (0, std::ptr::null()),
        }
    }

    fn prepare(dec: &mut FrameDecoder, batch: usize) -> usize {
        peek_lend(dec, batch).0
    }

    fn start(dec: &mut FrameDecoder, batch: usize) -> *const u8 {
        peek_lend(dec, batch).1
    }

    /// Receives `bytes` straight into a lent buffer.
    fn append(dec: &mut FrameDecoder, bytes: &[u8]) {
        let mut lent = dec.lend(bytes.len()).expect("room to read");
        assert!(lent.want() >= bytes.len());
        lent.buf_mut().extend_from_slice(bytes);
        assert_eq!(dec.feed_lent(lent), bytes.len());
    }

    /// Reads as a driver does: a lent buffer, then at most its `want` bytes
    /// into the spare capacity (which must not reallocate).
    fn read_like_a_driver(
        dec: &mut FrameDecoder,
        src: &mut &[u8],
        batch: usize,
        max_read: usize,
    ) -> usize {
        let Some(mut lent) = dec.lend(batch) else {
            return 0;
        };
        let want = lent.want();
        let n = want.min(src.len()).min(max_read);
        let buf = lent.buf_mut();
        let (cap, ptr) = (buf.capacity(), buf.as_ptr());
        assert!(buf.capacity() - buf.len() >= want);
        buf.extend_from_slice(&src[..n]);
        assert_eq!(
            (cap, ptr),
            (buf.capacity(), buf.as_ptr()),
            "a read reallocated"
        );
        assert_eq!(dec.feed_lent(lent), n);
        *src = &src[n..];
        n
    }

    #[test]
    fn a_large_body_is_read_in_place_up_to_the_next_prefix() {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BODY);
        let stream = [frame(&[1; 40_000]), frame(&[2; 30_000]), frame(b"small")].concat();
        let mut src = &stream[..];
        // Nothing buffered: a batch, which here takes the prefix and part of the body.
        assert_eq!(
            read_like_a_driver(&mut dec, &mut src, 1000, usize::MAX),
            1000
        );
        // Then exactly the rest of the 40 000-byte body and the next prefix.
        assert_eq!(prepare(&mut dec, 1000), 40_000 - 996 + HEADER_LEN);
        let body_start = start(&mut dec, 1000);
        read_like_a_driver(&mut dec, &mut src, 1000, 25_000);
        read_like_a_driver(&mut dec, &mut src, 1000, usize::MAX);
        // The second body: its own allocation, exactly the rest plus a prefix.
        assert_eq!(prepare(&mut dec, 1000), 30_000 + HEADER_LEN);
        let first = dec.decode().unwrap().unwrap();
        assert_eq!(
            (first.len(), first.as_ptr()),
            (40_000, body_start),
            "the body was moved"
        );
        let second_start = start(&mut dec, 1000);
        read_like_a_driver(&mut dec, &mut src, 1000, usize::MAX);
        let second = dec.decode().unwrap().unwrap();
        assert_eq!((second.len(), second.as_ptr()), (30_000, second_start));
        // A small frame after it: back to batches.
        assert_eq!(prepare(&mut dec, 1000), 1000);
        read_like_a_driver(&mut dec, &mut src, 1000, usize::MAX);
        assert_eq!(dec.decode().unwrap().unwrap(), &b"small"[..]);
        assert_eq!(dec.decode(), Ok(None));
    }

    #[test]
    fn an_idle_decoder_reserves_little_until_a_frame_arrives() {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BODY);
        assert_eq!(prepare(&mut dec, 64 * 1024), IDLE_READ);
        assert!(dec.capacity() < 2 * IDLE_READ, "{}", dec.capacity());
        // Part of a small frame arrived: now reads are batches.
        append(&mut dec, &frame(&[1; 100])[..10]);
        assert_eq!(prepare(&mut dec, 64 * 1024), 64 * 1024);
    }

    #[test]
    fn feed_does_not_move_a_large_body_when_a_chunk_spans_two_frames() {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BODY);
        let stream = [frame(&[1; 50_000]), frame(&[2; 50_000])].concat();
        // As after a previous large body: the prefix has arrived on its own.
        dec.feed(&stream[..HEADER_LEN]);
        assert_eq!(prepare(&mut dec, 1), 50_000 + HEADER_LEN);
        let first_start = start(&mut dec, 1);
        dec.feed(&stream[HEADER_LEN..30_000]);
        dec.feed(&stream[30_000..80_000]);
        dec.feed(&stream[80_000..]);
        let first = dec.decode().unwrap().unwrap();
        let second = dec.decode().unwrap().unwrap();
        assert_eq!(first.as_ptr(), first_start);
        assert_eq!(
            (&first[..], &second[..]),
            (&[1; 50_000][..], &[2; 50_000][..])
        );
    }

    #[test]
    fn frames_split_ahead_are_bounded_and_keep_their_order() {
        let mut dec = FrameDecoder::new(100);
        let stream: Vec<u8> = (0..READY_MAX as u8 + 10)
            .flat_map(|i| frame(&[i; 3]))
            .collect();
        dec.feed(&stream);
        assert_eq!(prepare(&mut dec, 64), 0, "decode first");
        assert_eq!(dec.buffered(), stream.len() - READY_MAX * HEADER_LEN);
        for i in 0..READY_MAX as u8 + 10 {
            assert_eq!(dec.decode().unwrap().unwrap(), &[i; 3][..]);
        }
        assert_eq!(prepare(&mut dec, 64), 64);
    }

    #[test]
    fn a_raised_limit_applies_to_a_prefix_seen_before_it() {
        // The handshake keeps the limit small; a data frame may already be
        // buffered behind the last handshake frame when the limit rises.
        let mut dec = FrameDecoder::new(10);
        dec.feed(&[frame(b"hello"), frame(&[7; 100])].concat());
        assert_eq!(prepare(&mut dec, 64), 0);
        assert_eq!(dec.decode().unwrap().unwrap(), &b"hello"[..]);
        dec.set_max_body(200);
        assert_eq!(dec.decode().unwrap().unwrap(), &[7; 100][..]);
        // Without the raise the same stream is refused.
        let mut dec = FrameDecoder::new(10);
        dec.feed(&[frame(b"hello"), frame(&[7; 100])].concat());
        assert!(dec.decode().unwrap().is_some());
        assert_eq!(
            dec.decode(),
            Err(FrameError::TooLarge { len: 100, max: 10 })
        );
        assert_eq!(prepare(&mut dec, 64), 0);
    }

    proptest! {
        #[test]
        fn split_anywhere(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let stream: Vec<u8> = bodies.iter().flat_map(|b| frame(b)).collect();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut dec = FrameDecoder::new(300);
            let mut got = Vec::new();
            for w in points.windows(2) {
                prop_assert!(dec.wanted() <= HEADER_LEN + 300);
                dec.feed(&stream[w[0]..w[1]]);
                got.extend(drain(&mut dec).unwrap());
            }
            prop_assert_eq!(got, bodies);
            prop_assert_eq!(dec.buffered(), 0);
            prop_assert_eq!(dec.wanted(), HEADER_LEN);
        }

        #[test]
        fn driver_reads_deliver_every_frame_without_reallocating(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40_000), 0..6),
            reads in proptest::collection::vec(1usize..70_000, 1..40),
            batch in 1usize..70_000,
        ) {
            let stream: Vec<u8> = bodies.iter().flat_map(|b| frame(b)).collect();
            let mut src = &stream[..];
            let mut dec = FrameDecoder::new(40_000);
            let mut got = Vec::new();
            let mut i = 0;
            while !src.is_empty() {
                let n = read_like_a_driver(&mut dec, &mut src, batch, reads[i % reads.len()]);
                i += 1;
                got.extend(drain(&mut dec).unwrap());
                prop_assert!(n > 0 || i < 10_000);
            }
            got.extend(drain(&mut dec).unwrap());
            prop_assert_eq!(got, bodies);
            prop_assert_eq!(dec.buffered(), 0);
        }
    }
}

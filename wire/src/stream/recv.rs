//! The receiving half of one stream: a buffer bounded by the window we
//! granted, and the credit to re-grant as the application reads.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::{ReadError, ReadOutcome, StreamId, Violation};

/// Where the receiving half is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecvState {
    /// Data may arrive.
    Open,
    /// The peer finished; buffered data is still to be read.
    Finished,
    /// The peer reset the stream; the application has not seen it yet.
    ResetRecvd(u32),
    /// We stopped reading: arriving data is discarded until the peer's
    /// `Finish` or `Reset`.
    Stopped,
    /// Terminal: the application read the end.
    Read,
    /// Terminal: the application saw the reset.
    ResetRead(u32),
    /// Terminal: we stopped, and the peer's half has ended.
    StopDone,
}

/// What one `Data` record did.
pub(super) enum Arrival {
    /// Buffered for the application.
    Buffered,
    /// Discarded (we stopped reading): its credit is free again.
    Discarded,
}

/// Largest block received bytes are copied into.
const BLOCK: usize = 64 * 1024;

/// Received bytes, copied out of their frames into blocks of at most
/// [`BLOCK`] (or the window, if smaller) and handed out as zero-copy
/// slices of them: a reader takes whole runs without another copy, and a
/// block is reused by nothing but the bytes in it, so the buffer holds at
/// most its content plus one block.
#[derive(Debug)]
struct Blocks {
    full: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
    block: usize,
}

impl Blocks {
    fn new(window: u64) -> Self {
        Self {
            full: VecDeque::new(),
            tail: BytesMut::new(),
            len: 0,
            block: usize::try_from(window).map_or(BLOCK, |w| w.clamp(1, BLOCK)),
        }
    }

    fn push(&mut self, data: &[u8]) {
        if self.tail.capacity() - self.tail.len() < data.len() {
            if !self.tail.is_empty() {
                self.full.push_back(self.tail.split().freeze());
            }
            self.tail = BytesMut::with_capacity(self.block.max(data.len()));
        }
        self.tail.extend_from_slice(data);
        self.len += data.len();
    }

    /// Up to `max` bytes from the front, zero-copy (one block at most).
    fn take(&mut self, max: usize) -> Bytes {
        let b = match self.full.front_mut() {
            Some(front) if front.len() <= max => self.full.pop_front().unwrap_or_default(),
            Some(front) => front.split_to(max),
            None => {
                let n = max.min(self.tail.len());
                self.tail.split_to(n).freeze()
            }
        };
        self.len -= b.len();
        b
    }
}

#[derive(Debug)]
pub(super) struct RecvHalf {
    buf: Blocks,
    /// Bytes received: the offset the next `Data` must start at.
    received: u64,
    /// Credit granted to the peer (absolute offset).
    pub(super) max_offset: u64,
    /// Bytes read by the application or discarded.
    consumed: u64,
    window: u64,
    pub(super) state: RecvState,
    /// A `StreamCredit` with `max_offset` is to be sent.
    pub(super) credit_pending: bool,
    /// The application waits for data: the next arrival is an event.
    pub(super) wants_readable: bool,
}

impl RecvHalf {
    pub(super) fn new(window: u64) -> Self {
        Self {
            buf: Blocks::new(window),
            received: 0,
            max_offset: window,
            consumed: 0,
            window,
            state: RecvState::Open,
            credit_pending: false,
            wants_readable: true,
        }
    }

    /// Bytes buffered for the application.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len
    }

    pub(super) fn is_terminal(&self) -> bool {
        matches!(
            self.state,
            RecvState::Read | RecvState::ResetRead(_) | RecvState::StopDone
        )
    }

    /// The peer's half has ended (its `Finish` or `Reset` arrived).
    fn peer_ended(&self) -> bool {
        !matches!(self.state, RecvState::Open | RecvState::Stopped)
    }

    /// A `Data` record: in order, within credit, before the end.
    pub(super) fn on_data(
        &mut self,
        id: StreamId,
        offset: u64,
        payload: &[u8],
    ) -> Result<Arrival, Violation> {
        if self.peer_ended() {
            return Err(Violation::DataAfterFinish(id));
        }
        if offset != self.received {
            return Err(Violation::OffsetMismatch {
                id,
                expected: self.received,
                got: offset,
            });
        }
        let end = offset
            .checked_add(payload.len() as u64)
            .filter(|end| *end <= self.max_offset)
            .ok_or(Violation::StreamCreditExceeded(id))?;
        self.received = end;
        if self.state == RecvState::Stopped {
            self.consumed = end;
            return Ok(Arrival::Discarded);
        }
        // Copied: a slice of the frame would keep the whole frame alive for
        // a few bytes of window (see the module docs, # Security).
        self.buf.push(payload);
        Ok(Arrival::Buffered)
    }

    fn check_final(&self, id: StreamId, final_size: u64) -> Result<(), Violation> {
        if self.peer_ended() {
            return Err(Violation::DataAfterFinish(id));
        }
        // Over an ordered transport every byte sent arrived before the end.
        if final_size != self.received {
            return Err(Violation::FinalSizeMismatch {
                id,
                expected: self.received,
                got: final_size,
            });
        }
        Ok(())
    }

    /// The peer's `Finish`; true if the application is to be told.
    pub(super) fn on_finish(&mut self, id: StreamId, final_size: u64) -> Result<bool, Violation> {
        self.check_final(id, final_size)?;
        self.credit_pending = false;
        if self.state == RecvState::Stopped {
            self.state = RecvState::StopDone;
            return Ok(false);
        }
        self.state = RecvState::Finished;
        Ok(true)
    }

    /// The peer's `Reset`: buffered bytes are dropped. Returns the bytes
    /// freed and whether the application is to be told.
    pub(super) fn on_reset(
        &mut self,
        id: StreamId,
        code: u32,
        final_size: u64,
    ) -> Result<(u64, bool), Violation> {
        self.check_final(id, final_size)?;
        self.credit_pending = false;
        let freed = self.discard();
        if self.state == RecvState::Stopped {
            self.state = RecvState::StopDone;
            return Ok((freed, false));
        }
        self.state = RecvState::ResetRecvd(code);
        Ok((freed, true))
    }

    /// Drops the buffer; returns the bytes freed.
    fn discard(&mut self) -> u64 {
        let n = self.buf.len as u64;
        self.buf = Blocks::new(self.window);
        self.consumed += n;
        n
    }

    /// Takes at most `max` buffered bytes (one block's run at most), handed
    /// to `take` as a zero-copy slice.
    pub(super) fn read_with(
        &mut self,
        max: usize,
        take: impl FnOnce(Bytes),
    ) -> Result<(ReadOutcome, u64), ReadError> {
        match self.state {
            RecvState::Open | RecvState::Finished if self.buf.len > 0 && max == 0 => {
                Ok((ReadOutcome::Data(0), 0))
            }
            RecvState::Open | RecvState::Finished if self.buf.len > 0 => {
                let b = self.buf.take(max);
                let n = b.len();
                take(b);
                self.consumed += n as u64;
                self.update_credit();
                Ok((ReadOutcome::Data(n), n as u64))
            }
            RecvState::Open => {
                self.wants_readable = true;
                Err(ReadError::Blocked)
            }
            RecvState::Finished | RecvState::Read => {
                self.state = RecvState::Read;
                Ok((ReadOutcome::Finished, 0))
            }
            RecvState::ResetRecvd(code) | RecvState::ResetRead(code) => {
                self.state = RecvState::ResetRead(code);
                Err(ReadError::Reset(code))
            }
            RecvState::Stopped | RecvState::StopDone => Err(ReadError::Closed),
        }
    }

    /// Re-grants the window once half of it was consumed.
    fn update_credit(&mut self) {
        if self.state != RecvState::Open {
            return;
        }
        let target = self.consumed.saturating_add(self.window);
        if target.saturating_sub(self.max_offset) >= self.window / 2 {
            self.max_offset = target;
            self.credit_pending = true;
        }
    }

    /// The application stops reading. Returns the bytes freed and whether
    /// a `Stop` record is to be sent.
    pub(super) fn stop(&mut self) -> Result<(u64, bool), ReadError> {
        match self.state {
            RecvState::Open => {
                let freed = self.discard();
                self.state = RecvState::Stopped;
                self.credit_pending = false;
                Ok((freed, true))
            }
            RecvState::Finished | RecvState::ResetRecvd(_) => {
                let freed = self.discard();
                self.state = RecvState::StopDone;
                Ok((freed, false))
            }
            _ => Err(ReadError::Closed),
        }
    }
}

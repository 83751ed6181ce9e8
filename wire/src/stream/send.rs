//! The sending half of one stream: bytes accepted within the peer's credit
//! and not yet handed to the connection, and how the half ends.

use bytes::{Bytes, BytesMut};

use super::WriteError;

/// Where the sending half is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendState {
    /// Writes are accepted.
    Open,
    /// `finish` was called; the `Finish` record follows the pending bytes.
    Finishing,
    /// Terminal: `Finish` handed out.
    FinSent,
    /// A `Reset` is to be sent; `stopped` is the peer's `Stop` code when
    /// the reset answers one.
    ResetPending { code: u32, stopped: Option<u32> },
    /// Terminal: `Reset` handed out.
    ResetSent { stopped: Option<u32> },
}

#[derive(Debug)]
pub(super) struct SendHalf {
    pub(super) pending: BytesMut,
    /// Offset handed out in `Data` records so far.
    pub(super) sent: u64,
    /// The peer's credit (absolute offset).
    pub(super) max_offset: u64,
    pub(super) state: SendState,
    /// A write was refused for lack of credit or room: the next gain is an
    /// event.
    pub(super) blocked: bool,
}

impl SendHalf {
    pub(super) fn new(credit: u64) -> Self {
        Self {
            pending: BytesMut::new(),
            sent: 0,
            max_offset: credit,
            state: SendState::Open,
            blocked: false,
        }
    }

    pub(super) fn is_terminal(&self) -> bool {
        matches!(self.state, SendState::FinSent | SendState::ResetSent { .. })
    }

    /// Why the half takes no more writes, if it does not.
    pub(super) fn check_writable(&self) -> Result<(), WriteError> {
        match self.state {
            SendState::Open => Ok(()),
            SendState::ResetPending {
                stopped: Some(code),
                ..
            }
            | SendState::ResetSent {
                stopped: Some(code),
            } => Err(WriteError::Stopped(code)),
            _ => Err(WriteError::Closed),
        }
    }

    /// Stream credit left for new writes.
    pub(super) fn room(&self) -> u64 {
        self.max_offset
            .saturating_sub(self.sent)
            .saturating_sub(self.pending.len() as u64)
    }

    /// Abandons the half: pending bytes are dropped (returned count).
    pub(super) fn reset(&mut self, code: u32, stopped: Option<u32>) -> u64 {
        let dropped = self.pending.len() as u64;
        self.pending = BytesMut::new();
        self.state = SendState::ResetPending { code, stopped };
        dropped
    }

    /// Up to `max` pending bytes for a `Data` record: `(offset, payload)`,
    /// a zero-copy split of the pending buffer.
    pub(super) fn take_chunk(&mut self, max: usize) -> Option<(u64, Bytes)> {
        let n = max.min(self.pending.len());
        if n == 0 {
            return None;
        }
        let offset = self.sent;
        let payload = self.pending.split_to(n).freeze();
        self.sent += n as u64;
        Some((offset, payload))
    }
}

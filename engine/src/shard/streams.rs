//! Streams on the shard: each connection's `shoal_wire` streams synced
//! with the application's pipes (see `crate::streams`).
//!
//! # Design
//! A slot keeps the pipe of each stream its application holds. A stream is
//! *synced* (`sync`) whenever something may have changed on either side:
//! a poke from the application ([`Command::Stream`]), a stream event after
//! input (`Readable`, `Writable`, `Finished`, `Reset`, `Stopped`), and the
//! timer sweep for pipes whose poke the full command queue refused. A sync
//! moves written bytes into the connection as far as credit allows, applies
//! `finish` / `reset` / `stop`, and moves received bytes into the pipe as
//! far as it has room; then it wakes whichever side gained something. A
//! pipe leaves the slot once both its halves ended; when the connection
//! closes, every pipe still there fails with the close's reason.
//!
//! [`Command::Stream`]: super::Command::Stream

use std::sync::Arc;

use shoal_wire::stream::{
    Event as StreamEvent, OpenError, ReadError, ReadOutcome, StreamId, WriteError,
};

use super::ShardCore;
use crate::events::DisconnectReason;
use crate::inbox::Rejected;
use crate::peers::ConnId;
use crate::shard::slot::Live;
use crate::streams::pipe::{Pipe, RecvEnd};
use crate::streams::{IncomingStream, RecvStream, SendStream, StreamError, REFUSED};

/// The reply to an open: the new stream's handles. They travel as handles,
/// not as a bare pipe, so an opener that gave up (its future dropped after
/// the reply was sent) still finishes and stops the stream by dropping them.
pub(crate) type OpenReply =
    tokio::sync::oneshot::Sender<Result<(SendStream, RecvStream), StreamError>>;

impl ShardCore {
    /// [`super::Command::StreamOpen`].
    pub(super) fn open_stream(&mut self, conn: ConnId, channel: u32, reply: OpenReply) {
        let cap = self.stream_pipe_cap();
        let max_pending = self.shared.config.streams.max_streams;
        let shared = self.shared.clone();
        let result = match self.conns.live_mut(conn) {
            None => Err(StreamError::NotConnected),
            Some(slot) if !slot.conn.is_open() => Err(StreamError::NotConnected),
            Some(slot) if slot.conn.peer_has_streams() == Some(false) => {
                Err(StreamError::PeerTakesNoStreams)
            }
            Some(slot) => match slot.conn.streams() {
                None => Err(StreamError::UnknownChannel),
                Some(streams) => match streams.open(channel) {
                    Ok(id) => {
                        let pipe = Arc::new(Pipe::new(shared, conn, id, cap));
                        slot.pipes.insert(id, pipe.clone());
                        Ok(pipe)
                    }
                    Err(OpenError::TooManyStreams)
                        if !streams.peer_limits_known()
                            && (slot.pending_opens.len() as u64) < max_pending =>
                    {
                        // The connection just established: the peer's
                        // first record (its limits, or anything else if it
                        // takes no streams) is on its way.
                        slot.pending_opens.push((channel, reply));
                        return;
                    }
                    Err(OpenError::TooManyStreams) => Err(StreamError::TooManyStreams),
                    Err(OpenError::ConnectionLost(_)) => Err(StreamError::NotConnected),
                },
            },
        };
        match result {
            Ok(pipe) => {
                self.shared.metrics.streams_opened.inc();
                self.shared.metrics.streams_open.inc();
                // An opener that is gone drops the handles here: they
                // finish and stop the stream.
                let _ = reply.send(Ok((SendStream::new(pipe.clone()), RecvStream::new(pipe))));
                self.dirty.push(conn.key);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Opens that waited for the peer's first record, once it came.
    fn retry_pending_opens(&mut self, key: usize) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let known = slot.conn.peer_has_streams() == Some(false)
            || slot.conn.streams().is_some_and(|s| s.peer_limits_known());
        if slot.pending_opens.is_empty() || !known {
            return;
        }
        let waiting = std::mem::take(&mut slot.pending_opens);
        if let Some(conn) = self.conn_id(key) {
            for (channel, reply) in waiting {
                self.open_stream(conn, channel, reply);
            }
        }
    }

    /// [`super::Command::Stream`]: the application changed `id`'s pipe.
    pub(super) fn stream_poked(&mut self, conn: ConnId, id: StreamId, now: std::time::Instant) {
        if self.conns.live(conn).is_some() {
            self.sync(conn.key, id);
            self.after_io(conn.key, now);
        }
    }

    /// The streams' events after input or a command, and the failure of
    /// every pipe once the connection is closed.
    pub(super) fn pump_streams(&mut self, key: usize) {
        self.retry_pending_opens(key);
        loop {
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            if slot.conn.is_closed() {
                let reason = slot.end_reason("local_close");
                self.fail_pipes(key, reason);
                return;
            }
            let Some(ev) = slot.conn.streams().and_then(|s| s.poll_event()) else {
                return;
            };
            match ev {
                StreamEvent::Opened { id, channel } => self.accept_stream(key, id, channel),
                StreamEvent::Stopped { id, code } => {
                    if let Some(pipe) = self.conns.get(key).and_then(|s| s.pipes.get(&id)) {
                        let mut st = pipe.lock();
                        st.send_error.get_or_insert(StreamError::Stopped(code));
                        st.send.clear();
                        drop(st);
                        pipe.writable.notify(usize::MAX);
                    }
                    self.sync(key, id);
                }
                StreamEvent::Readable { id }
                | StreamEvent::Writable { id }
                | StreamEvent::Finished { id }
                | StreamEvent::Reset { id, .. } => self.sync(key, id),
                StreamEvent::Lost { id, .. } => {
                    let reason = self.conns.get(key).map(|s| s.end_reason("local_close"));
                    self.fail_pipe(key, id, reason.unwrap_or(DisconnectReason::Local));
                }
                StreamEvent::CanOpen => self.retry_pending_opens(key),
            }
        }
    }

    /// Syncs the pipes whose poke was refused (the timer sweep).
    pub(super) fn sync_dirty_pipes(&mut self) {
        let deferred = &self.shared.shards[self.id].stream_pokes_deferred;
        if !deferred.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let dirty: Vec<(usize, StreamId)> = self
            .conns
            .iter()
            .flat_map(|(key, s)| {
                s.pipes
                    .iter()
                    .filter(|(_, p)| p.lock().dirty)
                    .map(move |(id, _)| (key, *id))
            })
            .collect();
        for (key, id) in dirty {
            self.sync(key, id);
            if let Some(slot) = self.conns.get(key) {
                if slot.conn.has_output() {
                    self.dirty.push(key);
                }
            }
        }
    }

    fn stream_pipe_cap(&self) -> usize {
        usize::try_from(self.shared.config.streams.window).unwrap_or(usize::MAX)
    }

    fn accept_stream(&mut self, key: usize, id: StreamId, channel: u32) {
        let Some(conn) = self.conn_id(key) else {
            return;
        };
        let peer = self.conns.get(key).and_then(|s| s.conn.peer().cloned());
        let (Some(listener), Some(peer)) = (self.channels.streams.get(&channel).cloned(), peer)
        else {
            return self.refuse(key, id, "no_listener");
        };
        let pipe = Arc::new(Pipe::new(
            self.shared.clone(),
            conn,
            id,
            self.stream_pipe_cap(),
        ));
        let incoming = IncomingStream {
            peer,
            channel,
            send: SendStream::new(pipe.clone()),
            recv: RecvStream::new(pipe.clone()),
        };
        match listener.push(incoming) {
            Ok(()) => {
                listener.publish(1);
                if let Some(slot) = self.conns.get_mut(key) {
                    slot.pipes.insert(id, pipe);
                }
                self.shared.metrics.streams_accepted.inc();
                self.shared.metrics.streams_open.inc();
                self.sync(key, id);
            }
            Err(rejected) => {
                // A listener dropped since the lookup has no backlog either.
                let (incoming, reason) = match rejected {
                    Rejected::Full(i) => (i, "backlog_full"),
                    Rejected::Closed(i) => (i, "no_listener"),
                };
                // Its handles must not poke for a stream that never was.
                {
                    let mut st = pipe.lock();
                    st.finish = true;
                    st.stop = Some(REFUSED);
                }
                drop(incoming);
                self.refuse(key, id, reason);
            }
        }
    }

    /// Resets and stops a peer's stream nobody takes.
    fn refuse(&mut self, key: usize, id: StreamId, reason: &'static str) {
        if let Some(streams) = self.conns.get_mut(key).and_then(|s| s.conn.streams()) {
            let _ = streams.reset(id, REFUSED);
            let _ = streams.stop(id, REFUSED);
        }
        self.shared
            .metrics
            .streams_refused
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: reason.into(),
            })
            .inc();
        self.dirty.push(key);
    }

    /// See the module docs.
    fn sync(&mut self, key: usize, id: StreamId) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let Some(pipe) = slot.pipes.get(&id).cloned() else {
            return;
        };
        // What a `ConnectionLost` from the streams reports (a close began).
        let lost = slot.end_reason("local_close");
        let Some(streams) = slot.conn.streams() else {
            return;
        };
        let mut st = pipe.lock();
        st.dirty = false;
        st.poked = false;
        let (mut readable, mut writable) = (false, false);

        // Sending half.
        // A reset after a finish still abandons what the Finish has not
        // carried out yet (the wire refuses it once the Finish is sent).
        if let Some(code) = st.reset.filter(|_| !st.reset_applied) {
            let _ = streams.reset(id, code);
            st.reset_applied = true;
            st.send_done = true;
        }
        while !st.send_done && st.send_error.is_none() && !st.send.is_empty() {
            match streams.write(id, &st.send) {
                Ok(0) | Err(WriteError::Blocked) => break,
                Ok(n) => {
                    bytes::Buf::advance(&mut st.send, n);
                    writable = true;
                }
                Err(e) => {
                    st.send_error = Some(write_error(e, lost));
                    st.send.clear();
                    writable = true;
                }
            }
        }
        if !st.send_done {
            if st.send_error.is_some() {
                st.send_done = true;
            } else if st.finish && st.send.is_empty() {
                if let Err(e) = streams.finish(id) {
                    st.send_error = Some(write_error(e, lost));
                    writable = true;
                }
                st.send_done = true;
            }
        }

        // Receiving half.
        if !st.recv_done {
            if let Some(code) = st.stop {
                let _ = streams.stop(id, code);
                st.recv_done = true;
            }
        }
        while !st.recv_done {
            let room = pipe.cap.saturating_sub(st.recv.len());
            if room == 0 {
                st.recv_stalled = true;
                break;
            }
            // A slice of the connection's buffer: no copy until the reader.
            match streams.read_bytes(id, room) {
                Ok((ReadOutcome::Data(0), _)) | Err(ReadError::Blocked) => break,
                Ok((ReadOutcome::Data(n), chunk)) => {
                    st.recv.push(chunk);
                    self.shared.metrics.stream_bytes_in.inc_by(n as u64);
                    readable = true;
                }
                Ok((ReadOutcome::Finished, _)) => {
                    st.recv_end = Some(RecvEnd::Finished);
                    st.recv_done = true;
                    readable = true;
                }
                Err(e) => {
                    // A reset's error comes before bytes not yet read.
                    st.recv.clear();
                    st.recv_end = Some(RecvEnd::Failed(read_error(e, lost)));
                    st.recv_done = true;
                    readable = true;
                }
            }
        }
        let done = st.send_done && st.recv_done;
        drop(st);
        if done {
            slot.pipes.remove(&id);
            self.shared.metrics.streams_open.dec();
        }
        if readable {
            pipe.readable.notify(usize::MAX);
        }
        if writable {
            pipe.writable.notify(usize::MAX);
        }
    }

    fn fail_pipe(&mut self, key: usize, id: StreamId, reason: DisconnectReason) {
        if let Some(pipe) = self.conns.get_mut(key).and_then(|s| s.pipes.remove(&id)) {
            self.shared.metrics.streams_open.dec();
            fail(&pipe, reason);
        }
    }

    /// Fails every pipe of a closed connection.
    pub(super) fn fail_pipes(&mut self, key: usize, reason: DisconnectReason) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        for (_, pipe) in slot.pipes.drain() {
            self.shared.metrics.streams_open.dec();
            fail(&pipe, reason);
        }
    }
}

fn fail(pipe: &Pipe, reason: DisconnectReason) {
    let e = StreamError::ConnectionLost(reason);
    let mut st = pipe.lock();
    if st.send_error.is_none() && !st.send_done {
        st.send_error = Some(e);
    }
    st.send.clear();
    if st.recv_end.is_none() {
        st.recv_end = Some(RecvEnd::Failed(e));
    }
    st.send_done = true;
    st.recv_done = true;
    drop(st);
    pipe.readable.notify(usize::MAX);
    pipe.writable.notify(usize::MAX);
}

fn write_error(e: WriteError, lost: DisconnectReason) -> StreamError {
    match e {
        WriteError::Stopped(code) => StreamError::Stopped(code),
        WriteError::ConnectionLost(_) => StreamError::ConnectionLost(lost),
        WriteError::Blocked | WriteError::Closed | WriteError::UnknownStream => StreamError::Closed,
    }
}

fn read_error(e: ReadError, lost: DisconnectReason) -> StreamError {
    match e {
        ReadError::Reset(code) => StreamError::Reset(code),
        ReadError::ConnectionLost(_) => StreamError::ConnectionLost(lost),
        ReadError::Blocked | ReadError::Closed | ReadError::UnknownStream => StreamError::Closed,
    }
}

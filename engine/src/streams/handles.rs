//! What the application holds of a stream: its two halves, and the
//! listener of a stream channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use event_listener::EventListener;
use shoal_crypto::PublicKey;

use super::pipe::{Pipe, RecvEnd};
use super::StreamError;
use crate::inbox::Inbox;
use crate::wait::Wait;

/// Polls `listener` on `event` (registering it first): `Ready` once
/// notified, or registered (the caller looks again before waiting).
fn poll_listener(
    event: &event_listener::Event,
    listener: &mut Option<EventListener>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    match listener {
        None => {
            *listener = Some(event.listen());
            // Registered: the caller looks again before waiting.
            Poll::Ready(())
        }
        Some(l) => match Pin::new(l).poll(cx) {
            Poll::Ready(()) => {
                *listener = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        },
    }
}

/// The sending half of a stream. See [`crate::streams`].
pub struct SendStream {
    pipe: Arc<Pipe>,
    listener: Option<EventListener>,
}

impl SendStream {
    pub(crate) fn new(pipe: Arc<Pipe>) -> Self {
        Self {
            pipe,
            listener: None,
        }
    }

    /// The stream's id on its connection (the same on both sides).
    pub fn id(&self) -> u64 {
        self.pipe.id.0
    }

    /// Writes as much of `buf` as fits (at least one byte unless `buf` is
    /// empty), waiting for room when none is left.
    pub fn write<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> Wait<impl Future<Output = Result<usize, StreamError>> + 'a> {
        let spin = self.pipe.spin;
        Wait::new(
            std::future::poll_fn(move |cx| self.poll_write(cx, buf)),
            spin,
        )
    }

    /// Writes as much of `buf` as fits now, without waiting: `Ok(0)` when
    /// the stream has no room (or `buf` is empty).
    pub fn try_write(&mut self, buf: &[u8]) -> Result<usize, StreamError> {
        let waker = std::task::Waker::noop();
        match self.poll_write(&mut Context::from_waker(waker), buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(0),
        }
    }

    /// Writes all of `buf`, waiting for room as needed.
    pub fn write_all<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> Wait<impl Future<Output = Result<(), StreamError>> + 'a> {
        let spin = self.pipe.spin;
        let mut done = 0;
        Wait::new(
            std::future::poll_fn(move |cx| {
                while done < buf.len() {
                    match self.poll_write(cx, &buf[done..]) {
                        Poll::Ready(Ok(n)) => done += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Poll::Ready(Ok(()))
            }),
            spin,
        )
    }

    /// Ends the stream cleanly after the bytes written so far: the reader
    /// reads them, then the end. Does not wait.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        let mut st = self.pipe.lock();
        if let Some(e) = st.send_error {
            return Err(e);
        }
        if st.finish || st.reset.is_some() {
            return Err(StreamError::Closed);
        }
        st.finish = true;
        self.pipe.poke(st);
        Ok(())
    }

    /// Abandons the stream: unsent bytes are dropped and the reader's
    /// reads fail with [`StreamError::Reset`]`(code)`. Allowed after
    /// [`finish`](Self::finish) too: bytes still waiting here for the
    /// peer's credit are abandoned with the end, and the reader sees the
    /// reset instead of the end. Once every byte has reached the connection
    /// the end goes out with the next frame, and a reset has no effect.
    pub fn reset(&mut self, code: u32) -> Result<(), StreamError> {
        let mut st = self.pipe.lock();
        if let Some(e) = st.send_error {
            return Err(e);
        }
        if st.reset.is_some() {
            return Err(StreamError::Closed);
        }
        st.reset = Some(code);
        st.send.clear();
        self.pipe.poke(st);
        Ok(())
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<Result<usize, StreamError>> {
        loop {
            let mut st = self.pipe.lock();
            if let Some(e) = st.send_error {
                return Poll::Ready(Err(e));
            }
            if st.finish || st.reset.is_some() {
                return Poll::Ready(Err(StreamError::Closed));
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let room = self.pipe.cap.saturating_sub(st.send.len());
            if room > 0 {
                let n = room.min(buf.len());
                let was_empty = st.send.is_empty();
                super::pipe::reserve_within(&mut st.send, n, self.pipe.cap);
                st.send.extend_from_slice(&buf[..n]);
                // A non-empty buffer is the shard's to come back to (it
                // stopped for credit and resumes on the peer's grant).
                if was_empty {
                    self.pipe.poke(st);
                }
                self.listener = None;
                return Poll::Ready(Ok(n));
            }
            drop(st);
            if poll_listener(&self.pipe.writable, &mut self.listener, cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl Drop for SendStream {
    /// Finishes the stream unless it ended already.
    fn drop(&mut self) {
        let st = self.pipe.lock();
        if st.finish || st.reset.is_some() || st.send_error.is_some() {
            return;
        }
        drop(st);
        let _ = self.finish();
    }
}

impl std::io::Write for SendStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(SendStream::write(self, buf).blocking()?)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl tokio::io::AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().poll_write(cx, buf).map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Finishes the stream.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().finish() {
            Ok(()) | Err(StreamError::Closed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

/// The receiving half of a stream. See [`crate::streams`].
pub struct RecvStream {
    pipe: Arc<Pipe>,
    listener: Option<EventListener>,
}

impl RecvStream {
    pub(crate) fn new(pipe: Arc<Pipe>) -> Self {
        Self {
            pipe,
            listener: None,
        }
    }

    /// The stream's id on its connection (the same on both sides).
    pub fn id(&self) -> u64 {
        self.pipe.id.0
    }

    /// Reads into `out`, waiting for data: the count, or 0 once the peer
    /// finished and everything was read (or `out` is empty).
    pub fn read<'a>(
        &'a mut self,
        out: &'a mut [u8],
    ) -> Wait<impl Future<Output = Result<usize, StreamError>> + 'a> {
        let spin = self.pipe.spin;
        Wait::new(
            std::future::poll_fn(move |cx| self.poll_read(cx, out)),
            spin,
        )
    }

    /// Stops reading: buffered bytes are dropped, and the writer's writes
    /// fail with [`StreamError::Stopped`]`(code)`. Does not wait.
    pub fn stop(&mut self, code: u32) -> Result<(), StreamError> {
        let mut st = self.pipe.lock();
        if st.stop.is_some() {
            return Err(StreamError::Closed);
        }
        if let Some(end) = st.recv_end {
            if st.recv.is_empty() {
                return match end {
                    RecvEnd::Finished => Err(StreamError::Closed),
                    RecvEnd::Failed(e) => Err(e),
                };
            }
        }
        st.stop = Some(code);
        st.recv.clear();
        self.pipe.poke(st);
        Ok(())
    }

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<Result<usize, StreamError>> {
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            let mut st = self.pipe.lock();
            if st.stop.is_some() {
                return Poll::Ready(Err(StreamError::Closed));
            }
            if !st.recv.is_empty() {
                let n = st.recv.copy_to(out);
                self.listener = None;
                // The shard stopped filling a full buffer: half of it is
                // free again.
                if st.recv_stalled && st.recv.len() <= self.pipe.cap / 2 {
                    st.recv_stalled = false;
                    self.pipe.poke(st);
                }
                return Poll::Ready(Ok(n));
            }
            match st.recv_end {
                Some(RecvEnd::Finished) => return Poll::Ready(Ok(0)),
                Some(RecvEnd::Failed(e)) => return Poll::Ready(Err(e)),
                None => {}
            }
            drop(st);
            if poll_listener(&self.pipe.readable, &mut self.listener, cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl Drop for RecvStream {
    /// Stops the stream (code 0) unless its end was read.
    fn drop(&mut self) {
        let st = self.pipe.lock();
        let read_to_end = st.recv_end.is_some() && st.recv.is_empty();
        if read_to_end || st.stop.is_some() {
            return;
        }
        drop(st);
        let _ = self.stop(0);
    }
}

impl std::io::Read for RecvStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        Ok(RecvStream::read(self, out).blocking()?)
    }
}

impl tokio::io::AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.poll_read(cx, buf.initialize_unfilled()) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A stream a peer opened on a registered stream channel.
pub struct IncomingStream {
    /// Who opened it.
    pub peer: PublicKey,
    /// Its channel.
    pub channel: u32,
    /// Our sending half.
    pub send: SendStream,
    /// Our receiving half.
    pub recv: RecvStream,
}

/// The streams peers open on one stream channel
/// ([`crate::Network::streams`]), at most its backlog waiting to be
/// accepted (more are refused).
pub struct StreamListener {
    pub(crate) inbox: Arc<Inbox<IncomingStream>>,
    pub(crate) spin: Duration,
}

impl Drop for StreamListener {
    /// Refuses every later stream, and ends the waiting ones (their
    /// handles drop: finished and stopped).
    fn drop(&mut self) {
        self.inbox.close();
        while self.inbox.try_recv().is_ok() {}
    }
}

impl StreamListener {
    /// The next stream a peer opened; `None` once the network shut down.
    pub fn accept(&self) -> Wait<impl Future<Output = Option<IncomingStream>> + '_> {
        Wait::new(self.inbox.recv(), self.spin)
    }

    /// A stream waiting to be accepted, if any.
    pub fn try_accept(&self) -> Option<IncomingStream> {
        self.inbox.try_recv().ok()
    }
}

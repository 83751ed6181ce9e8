//! The epoll backend (mio): readiness I/O for the shard loop
//! ([`super::event_loop`]).
//!
//! # Design
//! Edge-triggered readiness. Each socket remembers whether it may still have
//! data (`readable`) or room (`writable`) since the last `WouldBlock` (or,
//! for data, the last short read: the socket was drained then, and new data
//! raises a new edge; not after the peer's FIN, which raises none), so a
//! connection paused by backpressure resumes reading without waiting for a new
//! edge. There is no buffer pool ([`ReadAhead::Never`]): each `recv` goes
//! straight into the buffer the read plan lends (the connection's frame
//! decoder, sized by it: the rest of a large body, or a batch of small
//! frames), so received bytes are never copied in user space. Output is the
//! connection's sealed batch, written with one `write` per batch. Readiness
//! is recorded as soon as the wait returns, so the wake-up's yield
//! ([`crate::waker::ShardWaker::woke`]) comes before the next turn drains
//! the command queue. This is the fallback where io_uring is unavailable and
//! the A/B baseline of every benchmark.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::event::Event;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::event_loop::{self, Backend, Socket};
use super::pool;
use crate::shard::{Arrived, DriverAction, ReadAhead, ReadPlan, ShardCore};
use crate::waker::Asleep;

const WAKE: Token = Token(usize::MAX);
/// Bytes read from one connection before giving others a turn.
const READ_QUANTUM: usize = 256 * 1024;

struct Sock {
    stream: TcpStream,
    /// Unwritten rest of the current batch.
    pending: Option<Bytes>,
    connecting: bool,
    readable: bool,
    /// The peer shut its side (or the socket failed): a short read no longer
    /// means "drained until the next edge", read on until `Ok(0)`.
    read_closed: bool,
    writable: bool,
}

/// The registered sockets.
struct Sockets {
    poll: Poll,
    socks: HashMap<usize, Sock>,
}

/// A shard's epoll backend.
struct Epoll {
    events: Events,
    io: Sockets,
    /// Sockets marked readable (plus, for a turn, some that stopped being so
    /// or closed): a turn reads from those, not from every socket (a node
    /// with thousands of quiet peers paid a scan of all of them per wake-up).
    may_read: Vec<usize>,
    /// The list being read this turn (kept to reuse its allocation).
    reading: Vec<usize>,
    /// A read stopped at [`READ_QUANTUM`], or a resumed connection has data
    /// behind an edge already consumed: the next turn must not wait.
    more_to_read: bool,
    /// The last wait returned events (for the idle spin).
    had_events: bool,
}

/// Runs a shard on epoll until shutdown completes.
pub(crate) fn run(mut core: ShardCore, busy_poll: bool) -> io::Result<()> {
    let poll = Poll::new()?;
    let wake_fd = core.waker().rx().as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&wake_fd), WAKE, Interest::READABLE)?;
    let mut b = Epoll {
        events: Events::with_capacity(1024),
        io: Sockets {
            poll,
            socks: HashMap::new(),
        },
        may_read: Vec::new(),
        reading: Vec::new(),
        more_to_read: false,
        had_events: false,
    };
    event_loop::run(&mut core, &mut b, busy_poll)
}

impl Backend for Epoll {
    fn adopt(
        &mut self,
        core: &mut ShardCore,
        key: usize,
        stream: std::net::TcpStream,
    ) -> io::Result<()> {
        self.io
            .register(core, key, TcpStream::from_std(stream), false);
        self.may_read.push(key);
        Ok(())
    }

    fn dial(&mut self, core: &mut ShardCore, key: usize, addr: SocketAddr) -> io::Result<()> {
        match TcpStream::connect(addr) {
            Ok(stream) => self.io.register(core, key, stream, true),
            Err(e) => core.finish_close(key, Some(e.to_string())),
        }
        Ok(())
    }

    /// Reads from every socket that may have data, as its read plan says.
    fn receive(&mut self, core: &mut ShardCore) -> io::Result<()> {
        self.more_to_read = false;
        let mut keys = std::mem::take(&mut self.reading);
        std::mem::swap(&mut keys, &mut self.may_read);
        keys.sort_unstable();
        keys.dedup();
        for &key in &keys {
            if !self
                .io
                .socks
                .get(&key)
                .is_some_and(|s| s.readable && !s.connecting)
            {
                continue;
            }
            // Still listed next turn; dropped then if no longer readable.
            self.may_read.push(key);
            self.read(core, key);
        }
        keys.clear();
        self.reading = keys;
        Ok(())
    }

    fn flush(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()> {
        self.io.flush(core, key);
        Ok(())
    }

    /// A connection that just resumed may have unread data behind an edge
    /// already consumed: read it next turn, without waiting for an event.
    fn replan(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()> {
        if self
            .io
            .socks
            .get(&key)
            .is_some_and(|s| s.readable && !s.connecting)
            && core.read_intent(key, ReadAhead::Never).starts_read()
        {
            self.more_to_read = true;
        }
        Ok(())
    }

    fn socket(&self, key: usize) -> Socket {
        match self.io.socks.get(&key) {
            None => Socket::Gone,
            Some(s) if s.pending.is_some() => Socket::Writing,
            Some(_) => Socket::Open,
        }
    }

    /// At once, unless a batch is half written (then once it is).
    fn detach(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()> {
        if self.io.socks.get(&key).is_some_and(|s| s.pending.is_some()) {
            return Ok(());
        }
        if let Some(mut sock) = self.io.socks.remove(&key) {
            if let Err(e) = self.io.poll.registry().deregister(&mut sock.stream) {
                tracing::warn!(error = %e, "epoll kept a moved socket");
            }
            core.detached(key, std::net::TcpStream::from(sock.stream));
        }
        Ok(())
    }

    fn close(&mut self, core: &mut ShardCore, key: usize, reset: bool) -> io::Result<()> {
        if let Some(sock) = self.io.socks.get(&key).filter(|_| reset) {
            reset_on_close(&sock.stream);
        }
        self.io.close(core, key, None);
        Ok(())
    }

    fn close_all(&mut self, core: &mut ShardCore) -> io::Result<()> {
        let keys: Vec<usize> = self.io.socks.keys().copied().collect();
        for key in keys {
            self.io.close(core, key, None);
        }
        for key in core.connection_keys() {
            core.finish_close(key, None);
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.io.socks.is_empty()
    }

    /// Readiness was recorded when the wait returned.
    fn complete(&mut self, _core: &mut ShardCore) -> io::Result<bool> {
        Ok(self.had_events)
    }

    /// Sockets close at once.
    fn reap(&mut self, _core: &mut ShardCore) {}

    fn busy(&mut self, _core: &ShardCore) -> bool {
        self.more_to_read
    }

    /// Nothing is queued: every operation ran when it was asked for.
    fn submit(&mut self) -> io::Result<bool> {
        Ok(false)
    }

    /// Nothing is in flight.
    fn linger(&mut self, _: &mut ShardCore, _: &mut Vec<DriverAction>) -> io::Result<bool> {
        Ok(false)
    }

    fn wait(
        &mut self,
        core: &mut ShardCore,
        timeout: Duration,
        asleep: Option<Asleep<'_>>,
    ) -> io::Result<()> {
        match self.io.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        drop(asleep);
        self.had_events = !self.events.is_empty();
        for ev in self.events.iter() {
            if ev.token() == WAKE {
                core.waker().woke();
            } else {
                on_event(&mut self.io, &mut self.may_read, core, ev);
            }
        }
        Ok(())
    }
}

impl Epoll {
    /// Reads from `key` until the socket is drained, the read plan stops, or
    /// the connection had its [`READ_QUANTUM`].
    fn read(&mut self, core: &mut ShardCore, key: usize) {
        let Some(sock) = self.io.socks.get_mut(&key) else {
            return;
        };
        let mut total = 0;
        let mut failed = None;
        while total < READ_QUANTUM {
            // Not `Into` while unprocessed input waits (the connection then
            // no longer wants to read), or once it stops reading.
            let ReadPlan::Into(mut buf) = core.read_plan(key, ReadAhead::Never) else {
                break;
            };
            let want = buf.want();
            let spare = buf.buf_mut().capacity() - buf.buf_mut().len();
            let asked = want.min(spare);
            let got = pool::recv_into_spare(&sock.stream, buf.buf_mut(), want);
            core.on_received(key, Arrived::Into(buf), Instant::now());
            match got {
                Ok(0) => {
                    failed = Some("connection closed by peer".to_string());
                    break;
                }
                Ok(n) => {
                    total += n;
                    // A short read drained the socket: data that arrives
                    // later raises a new edge, so asking again now would
                    // only cost a `WouldBlock` (one syscall per message on
                    // a ping-pong; tokio relies on the same). Not after the
                    // peer's FIN, which raises no further edge.
                    if n < asked && !sock.read_closed {
                        sock.readable = false;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sock.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(err) = failed {
            self.io.close(core, key, Some(err));
            return;
        }
        if total >= READ_QUANTUM && sock.readable {
            self.more_to_read = true;
        }
    }
}

/// Records one readiness event for a connection's socket.
fn on_event(io: &mut Sockets, may_read: &mut Vec<usize>, core: &mut ShardCore, ev: &Event) {
    let key = ev.token().0;
    let Some(sock) = io.socks.get_mut(&key) else {
        return;
    };
    // Before the connect check: a peer that speaks first and closes at once
    // can deliver its data and FIN with the connect's event.
    if ev.is_read_closed() || ev.is_error() {
        sock.read_closed = true;
    }
    if sock.connecting {
        if ev.is_writable() || ev.is_error() || ev.is_write_closed() {
            match sock.stream.take_error() {
                Ok(None) if sock.stream.peer_addr().is_ok() => {
                    sock.connecting = false;
                    sock.writable = true;
                    sock.readable = true;
                    may_read.push(key);
                    let _ = sock.stream.set_nodelay(true);
                    core.mark_dirty(key);
                }
                Ok(Some(e)) | Err(e) => io.close(core, key, Some(e.to_string())),
                Ok(None) => io.close(core, key, Some("connect failed".to_string())),
            }
        }
        return;
    }
    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
        sock.readable = true;
        may_read.push(key);
    }
    if ev.is_writable() {
        sock.writable = true;
        if sock.pending.is_some() {
            core.mark_dirty(key);
        }
    }
}

impl Sockets {
    /// Registers a socket for `key` (a connecting one waits for writability
    /// before it may read or write); on failure the connection is closed.
    fn register(
        &mut self,
        core: &mut ShardCore,
        key: usize,
        mut stream: TcpStream,
        connecting: bool,
    ) {
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            core.finish_close(key, Some(e.to_string()));
            return;
        }
        self.socks.insert(
            key,
            Sock {
                stream,
                pending: None,
                connecting,
                readable: !connecting,
                read_closed: false,
                writable: !connecting,
            },
        );
    }

    /// Writes `key`'s output until it is all written or the socket is full.
    fn flush(&mut self, core: &mut ShardCore, key: usize) {
        let Some(sock) = self.socks.get_mut(&key) else {
            return;
        };
        if sock.connecting || !sock.writable {
            return;
        }
        loop {
            if sock.pending.is_none() {
                sock.pending = core.poll_transmit(key);
            }
            let Some(buf) = sock.pending.as_mut() else {
                return;
            };
            match sock.stream.write(buf) {
                Ok(n) => {
                    bytes::Buf::advance(buf, n);
                    if buf.is_empty() {
                        sock.pending = None;
                    }
                    if n > 0 {
                        core.handle_sent(key, sock.pending.is_none(), Instant::now());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sock.writable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close(core, key, Some(e.to_string()));
                    return;
                }
            }
        }
    }

    /// Closes `key`'s socket (if any) and finishes its connection.
    fn close(&mut self, core: &mut ShardCore, key: usize, err: Option<String>) {
        if let Some(mut sock) = self.socks.remove(&key) {
            let _ = self.poll.registry().deregister(&mut sock.stream);
            let _ = sock.stream.shutdown(std::net::Shutdown::Both);
        }
        core.finish_close(key, err);
    }
}

/// Makes the coming close reset the connection (RST, `SO_LINGER` 0) rather
/// than queue a FIN behind unsent data the peer will not read: the kernel
/// frees the socket's buffers at once.
fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

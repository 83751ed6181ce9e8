//! The epoll driver (mio): readiness I/O over the same [`ShardCore`].
//!
//! # Design
//! Edge-triggered readiness. Each socket remembers whether it may still have
//! data (`readable`) or room (`writable`) since the last `WouldBlock` (or,
//! for data, the last short read: the socket was drained then, and new data
//! raises a new edge; not after the peer's FIN, which raises none), so a
//! connection paused by backpressure resumes reading without waiting for a new
//! edge. Each `recv` goes straight into the connection's frame decoder, sized
//! by it (the rest of a large body, or a batch of small frames), so received
//! bytes are never copied in user space; output is the connection's sealed
//! batch, written with one `write` per batch. This is the fallback where
//! io_uring is unavailable and the A/B baseline of every benchmark.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::driver::pool;
use crate::shard::{DriverAction, ShardCore};

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

/// Runs a shard on epoll until shutdown completes.
pub(crate) fn run(mut core: ShardCore, busy_poll: bool) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let wake_fd = core.waker().rx().as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&wake_fd), WAKE, Interest::READABLE)?;
    let mut socks: HashMap<usize, Sock> = HashMap::new();
    let mut actions = Vec::new();
    let batch = core.config().io.recv_buffer_size;
    let mut dirty = Vec::new();
    let mut idle = super::idle_spin::IdleSpin::new(core.config().io.idle_spin);
    let mut had_events = false;
    let mut may_read: Vec<usize> = Vec::new();

    loop {
        let now = Instant::now();
        core.injected_failure()?;
        let commands = core.drain_commands(now, &mut actions);
        for action in actions.drain(..) {
            match action {
                DriverAction::Adopt(std_stream, ip) => {
                    if std_stream.set_nonblocking(true).is_err() {
                        core.adopt_failed(ip);
                        continue;
                    }
                    let _ = std_stream.set_nodelay(true);
                    let key = core.insert(Some(ip), None, now);
                    let stream = TcpStream::from_std(std_stream);
                    register(&mut core, &poll, &mut socks, key, stream, false);
                    may_read.push(key);
                }
                DriverAction::Dial(peer, addr) => {
                    core.metrics().dials.inc();
                    let key = core.insert(None, Some((peer, addr)), now);
                    match TcpStream::connect(addr) {
                        Ok(stream) => register(&mut core, &poll, &mut socks, key, stream, true),
                        Err(e) => core.finish_close(key, Some(e.to_string())),
                    }
                }
                DriverAction::Shutdown => {}
            }
        }

        // Reads: every socket that may have data and whose connection wants
        // it. `may_read` lists the sockets marked readable (plus, for a turn,
        // some that stopped being so or closed): a turn looks at those, not
        // at every socket (a node with thousands of quiet peers paid a scan
        // of all of them per wake-up).
        let mut keys = std::mem::take(&mut may_read);
        keys.sort_unstable();
        keys.dedup();
        let mut more_to_read = false;
        for key in keys {
            if !socks.get(&key).is_some_and(|s| s.readable && !s.connecting) {
                continue;
            }
            // Still listed next turn; dropped then if no longer readable.
            may_read.push(key);
            if !core.wants_read(key) {
                continue;
            }
            let Some(sock) = socks.get_mut(&key) else {
                continue;
            };
            let mut total = 0;
            let mut failed = None;
            while total < READ_QUANTUM {
                let Some(conn) = core.connection_mut(key) else {
                    break;
                };
                // Zero only while unprocessed input waits, and input was just
                // processed: the connection then no longer wants to read.
                let want = conn.poll_read_len(batch);
                if want == 0 {
                    break;
                }
                let buf = conn.read_buf_mut();
                let asked = want.min(buf.capacity() - buf.len());
                match pool::recv_into_spare(&sock.stream, buf, want) {
                    Ok(0) => {
                        failed = Some("connection closed by peer".to_string());
                        break;
                    }
                    Ok(n) => {
                        total += n;
                        conn.handle_read(Instant::now());
                        core.metrics().recv_direct_bytes.inc_by(n as u64);
                        core.process_input(key, Instant::now());
                        // A short read drained the socket: data that arrives
                        // later raises a new edge, so asking again now would
                        // only cost a `WouldBlock` (one syscall per message on
                        // a ping-pong; tokio relies on the same). Not after
                        // the peer's FIN, which raises no further edge.
                        if n < asked && !sock.read_closed {
                            sock.readable = false;
                            break;
                        }
                        if !core.wants_read(key) {
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
                close_sock(&mut core, &mut poll, &mut socks, key, Some(err));
                continue;
            }
            if total >= READ_QUANTUM && sock.readable {
                more_to_read = true;
            }
        }

        // Writes.
        dirty.clear();
        core.move_dirty_to(&mut dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &key in &dirty {
            flush(&mut core, &mut poll, &mut socks, key);
        }

        // Timers and paused connections.
        let now = Instant::now();
        core.handle_timers(now);
        if core.waker().take_resume() {
            core.retry_held(now);
        }
        let dirty_keys: Vec<usize> = core.take_dirty();
        for key in dirty_keys {
            flush(&mut core, &mut poll, &mut socks, key);
            // A connection that just resumed may have unread data behind an
            // edge already consumed: read it now, not after the next event.
            if socks.get(&key).is_some_and(|s| s.readable && !s.connecting) && core.wants_read(key)
            {
                more_to_read = true;
            }
        }

        // Closes: the protocol ended; write what is sealed, then drop. A
        // socket whose output stalled past the write timeout (or whose
        // flush ran out of time) is reset instead.
        let closing: Vec<usize> = core.closing().to_vec();
        for key in closing {
            if core.must_abort(key, now) {
                if let Some(sock) = socks.get(&key) {
                    reset_on_close(&sock.stream);
                }
                close_sock(&mut core, &mut poll, &mut socks, key, None);
                continue;
            }
            flush(&mut core, &mut poll, &mut socks, key);
            let drained = socks.get(&key).map(|s| s.pending.is_none()).unwrap_or(true);
            if drained || !socks.contains_key(&key) {
                close_sock(&mut core, &mut poll, &mut socks, key, None);
            }
        }
        if core.shutting_down() && (core.shutdown_complete() || core.shutdown_overdue(now)) {
            let keys: Vec<usize> = socks.keys().copied().collect();
            for key in keys {
                close_sock(&mut core, &mut poll, &mut socks, key, None);
            }
            let left: Vec<usize> = core.connection_keys();
            for key in left {
                core.finish_close(key, None);
            }
            return Ok(());
        }

        // Sleep (or spin). A closing socket still listed waits for
        // writability (an event) or its deadline (the timer budget).
        let busy = more_to_read || core.has_dirty();
        let mut timeout = if busy_poll || busy {
            Duration::ZERO
        } else {
            core.sleep_budget(now)
        };
        if timeout > Duration::ZERO && idle.keep_polling(commands || had_events, now) {
            std::thread::yield_now();
            timeout = Duration::ZERO;
        }
        if timeout > Duration::ZERO && core.yield_for_commands(&mut actions) {
            continue;
        }
        let sleeping = timeout > Duration::ZERO;
        if sleeping {
            core.waker().prepare_sleep();
            if core.has_commands(Instant::now(), &mut actions) || core.waker().resume_pending() {
                core.waker().cancel_sleep();
                continue;
            }
        }
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if sleeping {
            core.waker().cancel_sleep();
        }
        had_events = !events.is_empty();
        for ev in events.iter() {
            if ev.token() == WAKE {
                core.waker().woke();
                continue;
            }
            let key = ev.token().0;
            let Some(sock) = socks.get_mut(&key) else {
                continue;
            };
            // Before the connect check: a peer that speaks first and closes
            // at once can deliver its data and FIN with the connect's event.
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
                        Ok(Some(e)) | Err(e) => {
                            close_sock(&mut core, &mut poll, &mut socks, key, Some(e.to_string()));
                        }
                        Ok(None) => {
                            close_sock(
                                &mut core,
                                &mut poll,
                                &mut socks,
                                key,
                                Some("connect failed".to_string()),
                            );
                        }
                    }
                }
                continue;
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
    }
}

/// Registers a socket for `key` (a connecting one waits for writability
/// before it may read or write); on failure the connection is closed.
fn register(
    core: &mut ShardCore,
    poll: &Poll,
    socks: &mut HashMap<usize, Sock>,
    key: usize,
    mut stream: TcpStream,
    connecting: bool,
) {
    if let Err(e) = poll.registry().register(
        &mut stream,
        Token(key),
        Interest::READABLE | Interest::WRITABLE,
    ) {
        core.finish_close(key, Some(e.to_string()));
        return;
    }
    socks.insert(
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

fn flush(core: &mut ShardCore, poll: &mut Poll, socks: &mut HashMap<usize, Sock>, key: usize) {
    let Some(sock) = socks.get_mut(&key) else {
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
                close_sock(core, poll, socks, key, Some(e.to_string()));
                return;
            }
        }
    }
}

/// Makes the coming close reset the connection (RST, `SO_LINGER` 0) rather
/// than queue a FIN behind unsent data the peer will not read: the kernel
/// frees the socket's buffers at once.
fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

fn close_sock(
    core: &mut ShardCore,
    poll: &mut Poll,
    socks: &mut HashMap<usize, Sock>,
    key: usize,
    err: Option<String>,
) {
    if let Some(mut sock) = socks.remove(&key) {
        let _ = poll.registry().deregister(&mut sock.stream);
        let _ = sock.stream.shutdown(std::net::Shutdown::Both);
    }
    core.finish_close(key, err);
}

//! The shard loop, written once for every backend.
//!
//! # Design
//! One turn of [`run`]:
//! 1. **commands**: drain the shard's queue; adopt accepted sockets and start
//!    dials it asks for;
//! 2. **complete**: handle what the kernel finished (io_uring completions;
//!    epoll records readiness as soon as its wait returns);
//! 3. **receive**: start or perform the receives the read plan asks for
//!    ([`ShardCore::read_plan`]);
//! 4. **timers** and resumed connections, then the application's **tasks**
//!    ([`ShardCore::run_tasks`]);
//! 5. **transmit**: every dirty connection's output goes to the kernel and its
//!    receive is revisited;
//! 6. **close**: connections whose protocol ended are flushed, then closed
//!    (reset when [`ShardCore::must_abort`]); connections moving to another
//!    shard have their socket let go of ([`Backend::detach`]); shutdown ends
//!    the loop once every connection and socket is gone;
//! 7. **wait**: not at all when work is ready; otherwise a short idle spin
//!    ([`IdleSpin`]), one yield for commands ([`ShardCore::yield_for_commands`]),
//!    and the sleep handshake ([`ShardWaker::try_sleep`]) before the
//!    backend's wait.
//!
//! [`Backend`] holds only what differs between io_uring and epoll: how
//! operations are submitted, how the shard waits, and how their completion
//! is handled. Both implementations are plain structs driven by this loop;
//! it is generic over them, so every call is static and can be inlined.
//!
//! [`ShardWaker::try_sleep`]: crate::waker::ShardWaker::try_sleep

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::idle_spin::IdleSpin;
use crate::shard::{DriverAction, ShardCore};
use crate::waker::Asleep;

/// A connection's socket as the close step sees it ([`Backend::socket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Socket {
    /// No socket (never opened, or closed already).
    Gone,
    /// Its close has started; the backend frees it when done.
    Closing,
    /// Open, with no write unfinished.
    Open,
    /// Open, with a write unfinished.
    Writing,
}

/// What differs between I/O backends; see the [module docs](self).
pub(crate) trait Backend {
    // Submit.

    /// Takes over an accepted (non-blocking) socket as connection `key`;
    /// closes the connection if it cannot.
    fn adopt(&mut self, core: &mut ShardCore, key: usize, stream: TcpStream) -> io::Result<()>;

    /// Starts connecting `key` to `addr`; closes the connection if it cannot.
    fn dial(&mut self, core: &mut ShardCore, key: usize, addr: SocketAddr) -> io::Result<()>;

    /// Starts or performs the receives connections want.
    fn receive(&mut self, core: &mut ShardCore) -> io::Result<()>;

    /// Hands `key`'s sealed output to the kernel.
    fn flush(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()>;

    /// Revisits `key`'s receive: its read plan may have changed.
    fn replan(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()>;

    /// `key`'s socket, for the close step.
    fn socket(&self, key: usize) -> Socket;

    /// Lets go of `key`'s socket without closing it (the connection moves
    /// to another shard): once nothing of the backend's touches it any more
    /// (now, or when its operations completed), hands it to
    /// [`ShardCore::detached`]. Called every turn until then.
    fn detach(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()>;

    /// Closes `key`'s socket (`reset`: without flushing, with an RST); the
    /// connection is finished once the socket is gone.
    fn close(&mut self, core: &mut ShardCore, key: usize, reset: bool) -> io::Result<()>;

    /// Shutdown ran out of time: ends every socket.
    fn close_all(&mut self, core: &mut ShardCore) -> io::Result<()>;

    /// No socket is left.
    fn is_empty(&self) -> bool;

    // Complete.

    /// Handles what the kernel finished since the last turn; whether there
    /// was anything (for the idle spin).
    fn complete(&mut self, core: &mut ShardCore) -> io::Result<bool>;

    /// Frees the sockets whose close finished.
    fn reap(&mut self, core: &mut ShardCore);

    // Wait.

    /// Work is ready without waiting.
    fn busy(&mut self, core: &ShardCore) -> bool;

    /// Before sleeping: hands queued operations to the kernel; true if that
    /// completed something already (do not sleep).
    fn submit(&mut self) -> io::Result<bool>;

    /// Before sleeping, after the yield for commands: waits briefly for an
    /// operation about to complete; true if it (or a command) arrived.
    fn linger(&mut self, core: &mut ShardCore, actions: &mut Vec<DriverAction>)
        -> io::Result<bool>;

    /// Waits up to `timeout` for the kernel (zero: only submits and polls).
    /// `asleep` is the announced sleep when `timeout` is not zero; drop it
    /// as soon as the wait returns.
    fn wait(
        &mut self,
        core: &mut ShardCore,
        timeout: Duration,
        asleep: Option<Asleep<'_>>,
    ) -> io::Result<()>;
}

/// Runs `core` on `backend` until shutdown completes (or an I/O error).
pub(crate) fn run<B: Backend>(core: &mut ShardCore, b: &mut B, busy_poll: bool) -> io::Result<()> {
    let waker = core.waker().clone();
    let mut actions = Vec::new();
    let mut keys = Vec::new();
    let mut idle = IdleSpin::new(
        core.config().io.idle_spin,
        core.config().effective_wait_spin(),
    );
    loop {
        let now = Instant::now();
        core.injected_failure()?;
        let commands = core.drain_commands(now, &mut actions);
        perform(core, b, &mut actions, now)?;
        let completed = b.complete(core)?;
        b.receive(core)?;

        let now = Instant::now();
        core.handle_timers(now);
        if waker.take_resume() {
            core.retry_held(now);
        }
        let ran = core.run_tasks(now);
        keys.clear();
        core.move_dirty_to(&mut keys);
        keys.sort_unstable();
        keys.dedup();
        for &key in &keys {
            b.flush(core, key)?;
            b.replan(core, key)?;
        }
        keys.clear();
        keys.extend_from_slice(core.closing());
        for &key in &keys {
            close_ended(core, b, key, now)?;
        }
        keys.clear();
        keys.extend_from_slice(core.detaching());
        for &key in &keys {
            b.detach(core, key)?;
        }
        b.reap(core);
        if core.shutting_down() {
            if core.shutdown_overdue(now) {
                b.close_all(core)?;
            }
            if core.shutdown_complete() && b.is_empty() {
                return Ok(());
            }
        }

        let busy = busy_poll || core.has_dirty() || core.tasks_ready() || b.busy(core);
        let mut timeout = if busy {
            Duration::ZERO
        } else {
            core.sleep_budget(now)
        };
        if !timeout.is_zero()
            && idle.keep_polling(commands || completed || ran, core.has_tasks(), now)
        {
            // This turn's output goes to the kernel before the core is given
            // away: a send queued in the ring must not wait out the yield
            // (it is the round trip the spin is there to catch).
            if !b.submit()? {
                std::thread::yield_now();
            }
            timeout = Duration::ZERO;
        }
        if timeout.is_zero() {
            b.wait(core, timeout, None)?;
            continue;
        }
        if b.submit()? || core.yield_for_commands(&mut actions) || b.linger(core, &mut actions)? {
            continue;
        }
        let Some(asleep) = waker
            .try_sleep(|| core.has_commands(Instant::now(), &mut actions) || core.tasks_ready())
        else {
            // Handle the command at the top of the loop without waiting.
            continue;
        };
        b.wait(core, timeout, Some(asleep))?;
    }
}

/// Performs what the commands asked of the driver.
fn perform<B: Backend>(
    core: &mut ShardCore,
    b: &mut B,
    actions: &mut Vec<DriverAction>,
    now: Instant,
) -> io::Result<()> {
    for action in actions.drain(..) {
        match action {
            DriverAction::Adopt(stream, ip) => {
                if stream.set_nonblocking(true).is_err() {
                    core.adopt_failed(ip);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let key = core.insert(Some(ip), None, now);
                b.adopt(core, key, stream)?;
            }
            DriverAction::Dial(peer, addr) => {
                core.metrics().dials.inc();
                let key = core.insert(None, Some((peer, addr)), now);
                b.dial(core, key, addr)?;
            }
            DriverAction::Moved(moved) => {
                if let Some((key, stream)) = core.adopt_moved(moved) {
                    b.adopt(core, key, stream)?;
                    core.establish_moved(key, now);
                }
            }
            DriverAction::Shutdown => {}
        }
    }
    Ok(())
}

/// The protocol of `key` ended: write what is sealed, then close the
/// socket; one whose output stalled past the write timeout (or whose flush
/// ran out of time) is reset instead.
fn close_ended<B: Backend>(
    core: &mut ShardCore,
    b: &mut B,
    key: usize,
    now: Instant,
) -> io::Result<()> {
    match b.socket(key) {
        Socket::Gone => core.finish_close(key, None),
        Socket::Closing => {}
        Socket::Open | Socket::Writing => {
            if core.must_abort(key, now) {
                return b.close(core, key, true);
            }
            b.flush(core, key)?;
            if b.socket(key) != Socket::Writing {
                b.close(core, key, false)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use shoal_crypto::{Ed25519Signer, Signer};

    use super::*;
    use crate::config::Config;
    use crate::network::Network;
    use crate::shard::Command;

    /// A backend that performs nothing and records what the loop asked.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        sockets: BTreeSet<usize>,
    }

    impl Recorder {
        fn note(&mut self, call: &str) {
            self.calls.push(call.to_string());
        }
    }

    impl Backend for Recorder {
        fn adopt(&mut self, _: &mut ShardCore, key: usize, _: TcpStream) -> io::Result<()> {
            self.note("adopt");
            self.sockets.insert(key);
            Ok(())
        }
        fn dial(&mut self, _: &mut ShardCore, key: usize, _: SocketAddr) -> io::Result<()> {
            self.note("dial");
            self.sockets.insert(key);
            Ok(())
        }
        fn receive(&mut self, _: &mut ShardCore) -> io::Result<()> {
            self.note("receive");
            Ok(())
        }
        fn flush(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()> {
            self.note("flush");
            while core.poll_transmit(key).is_some() {}
            Ok(())
        }
        fn replan(&mut self, _: &mut ShardCore, _: usize) -> io::Result<()> {
            self.note("replan");
            Ok(())
        }
        fn socket(&self, key: usize) -> Socket {
            if self.sockets.contains(&key) {
                Socket::Open
            } else {
                Socket::Gone
            }
        }
        fn detach(&mut self, _: &mut ShardCore, _: usize) -> io::Result<()> {
            self.note("detach");
            Ok(())
        }
        fn close(&mut self, core: &mut ShardCore, key: usize, reset: bool) -> io::Result<()> {
            self.note(if reset { "reset" } else { "close" });
            self.sockets.remove(&key);
            core.finish_close(key, None);
            Ok(())
        }
        fn close_all(&mut self, core: &mut ShardCore) -> io::Result<()> {
            self.note("close_all");
            for key in std::mem::take(&mut self.sockets) {
                core.finish_close(key, None);
            }
            Ok(())
        }
        fn is_empty(&self) -> bool {
            self.sockets.is_empty()
        }
        fn complete(&mut self, _: &mut ShardCore) -> io::Result<bool> {
            self.note("complete");
            Ok(false)
        }
        fn reap(&mut self, _: &mut ShardCore) {
            self.note("reap");
        }
        fn busy(&mut self, _: &ShardCore) -> bool {
            false
        }
        fn submit(&mut self) -> io::Result<bool> {
            self.note("submit");
            Ok(false)
        }
        fn linger(&mut self, _: &mut ShardCore, _: &mut Vec<DriverAction>) -> io::Result<bool> {
            self.note("linger");
            Ok(false)
        }
        fn wait(
            &mut self,
            _: &mut ShardCore,
            timeout: Duration,
            asleep: Option<Asleep<'_>>,
        ) -> io::Result<()> {
            self.note(if asleep.is_some() { "sleep" } else { "poll" });
            assert_eq!(asleep.is_some(), !timeout.is_zero());
            Ok(())
        }
    }

    /// Runs the loop on a [`Recorder`] until another thread, 20 ms later,
    /// asks for shutdown and wakes the shard.
    fn run_until_shutdown_from_another_thread(core: &mut ShardCore) -> Recorder {
        let link = core.link().tx.clone();
        let waker = core.waker().clone();
        let mut b = Recorder::default();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                let deadline = Instant::now();
                assert!(link.send(Command::Shutdown { deadline }).is_ok());
                waker.wake();
            });
            run(core, &mut b, false).unwrap();
        });
        b
    }

    /// One turn in the loop's order: commands (a dial), completions,
    /// receives, the dirty connection's output and receive, closes; then,
    /// with shutdown overdue, every socket ends and the loop returns without
    /// waiting.
    #[test]
    fn a_turn_runs_its_steps_in_order_and_shutdown_ends_the_loop() {
        let (net, _oracle) = Network::new(Config::local(None)).unwrap();
        let mut core = net.into_shard_core();
        let peer = Ed25519Signer::insecure_from_seed(7).public_key().clone();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(core.link().send(Command::Dial { peer, addr }).is_ok());
        let deadline = Instant::now();
        assert!(core.link().send(Command::Shutdown { deadline }).is_ok());
        let mut b = Recorder::default();
        run(&mut core, &mut b, false).unwrap();
        assert_eq!(
            b.calls,
            [
                "dial",
                "complete",
                "receive",
                "flush",
                "replan",
                "reap",
                "close_all"
            ]
        );
        assert_eq!(core.metrics().dials.get(), 1);
    }

    /// A turn that did work is followed by the idle spin, whose every step
    /// first hands the turn's queued operations to the kernel (a send must
    /// not wait out the yield) and then polls without sleeping.
    #[test]
    fn the_idle_spin_submits_before_it_yields() {
        let mut cfg = Config::local(None);
        cfg.io.idle_spin = Duration::from_millis(1);
        let (net, _oracle) = Network::new(cfg).unwrap();
        let mut core = net.into_shard_core();
        let peer = Ed25519Signer::insecure_from_seed(7).public_key().clone();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(core.link().send(Command::Dial { peer, addr }).is_ok());
        let b = run_until_shutdown_from_another_thread(&mut core);
        let first_poll = b.calls.iter().position(|c| c == "poll");
        assert!(first_poll.is_some(), "the spin polls: {:?}", b.calls);
        let first_poll = first_poll.unwrap_or_default();
        assert_eq!(
            b.calls[..first_poll + 1],
            ["dial", "complete", "receive", "flush", "replan", "reap", "submit", "poll"]
        );
    }

    /// With nothing to do (and no idle spin), a turn yields for commands
    /// and goes through the sleep handshake to the backend's wait; a
    /// command from another thread is handled on a later turn.
    #[test]
    fn an_idle_shard_sleeps_in_the_backend() {
        let mut cfg = Config::local(None);
        cfg.io.idle_spin = Duration::ZERO;
        let (net, _oracle) = Network::new(cfg).unwrap();
        let mut core = net.into_shard_core();
        let b = run_until_shutdown_from_another_thread(&mut core);
        assert_eq!(
            b.calls[..6],
            ["complete", "receive", "reap", "submit", "linger", "sleep"]
        );
        assert_eq!(b.calls.last().map(String::as_str), Some("close_all"));
    }
}

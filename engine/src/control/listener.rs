//! The listening socket: binding it, closing and reopening it, and the
//! accept loop.
//!
//! # Design
//! The only socket the control shard owns. It is non-blocking and
//! registered with the control shard's poll, which wakes when a connection
//! is pending; [`Listener::accept_all`] then accepts until the kernel has
//! none left, asks the [`Acceptor`] about each socket and hands the
//! admitted ones to a data shard ([`super::shards::adopt`]). An accept
//! error other than "none left" (e.g. `EMFILE`) is logged and retried on the
//! next wake-up. [`Listener::set`] closes the socket (so the kernel refuses
//! new dials to this node) or reopens it on the address the node started
//! with.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};

use super::acceptor::{Acceptor, Verdict};
use crate::error::Error;
use crate::shared::Shared;

/// The listening socket's token in the control shard's poll.
pub(crate) const LISTENER: Token = Token(0);

/// Binds `addr` (none: the node does not listen), non-blocking.
pub(crate) fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, Error> {
    let Some(addr) = addr else { return Ok(None) };
    let l = TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
    l.set_nonblocking(true)?;
    Ok(Some(l))
}

/// See the module docs.
pub(crate) struct Listener {
    socket: Option<TcpListener>,
    /// The address to reopen on (the bound one: the same port when the
    /// kernel chose it).
    addr: Option<SocketAddr>,
}

impl Listener {
    /// Registers `socket`, bound at `addr`, with `poll`.
    pub(crate) fn new(
        poll: &Poll,
        socket: Option<TcpListener>,
        addr: Option<SocketAddr>,
    ) -> std::io::Result<Self> {
        if let Some(l) = &socket {
            register(poll, l)?;
        }
        Ok(Self { socket, addr })
    }

    /// Closes (`on == false`) or reopens the socket; returns the listening
    /// address, if any (see [`crate::NetworkHandle::listen`]).
    pub(crate) fn set(&mut self, poll: &Poll, on: bool) -> std::io::Result<Option<SocketAddr>> {
        match (on, self.socket.as_ref()) {
            (false, Some(l)) => {
                poll.registry().deregister(&mut SourceFd(&l.as_raw_fd()))?;
                self.socket = None;
                Ok(None)
            }
            (false, None) => Ok(None),
            (true, Some(l)) => l.local_addr().map(Some),
            (true, None) => {
                let Some(addr) = self.addr else {
                    return Ok(None);
                };
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                register(poll, &l)?;
                let bound = l.local_addr()?;
                self.socket = Some(l);
                Ok(Some(bound))
            }
        }
    }

    /// Accepts every pending connection (see the module docs).
    pub(crate) fn accept_all(
        &self,
        shared: &Shared,
        acceptor: &mut Acceptor,
        next_shard: &mut usize,
    ) {
        let Some(l) = &self.socket else { return };
        loop {
            match l.accept() {
                Ok((stream, from)) => {
                    let inbound = shared.inbound.load(std::sync::atomic::Ordering::Acquire);
                    let now = Instant::now();
                    match acceptor.handle_accept(from, inbound, &shared.inbound_ips, now) {
                        Verdict::Refuse(reason) => shared.metrics.refuse(reason),
                        Verdict::Admit { untracked } => {
                            if untracked {
                                shared.metrics.accept_rate_untracked.inc();
                            }
                            super::shards::adopt(shared, next_shard, stream, from.ip());
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: log and retry on the next tick.
                    tracing::warn!(error = %e, "accept failed");
                    break;
                }
            }
        }
    }
}

fn register(poll: &Poll, l: &TcpListener) -> std::io::Result<()> {
    poll.registry()
        .register(&mut SourceFd(&l.as_raw_fd()), LISTENER, Interest::READABLE)
}

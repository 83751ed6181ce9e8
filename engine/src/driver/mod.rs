//! I/O drivers: they own the sockets and move bytes; the protocol lives in
//! [`crate::connection`] and [`crate::shard::ShardCore`], and every decision
//! about a connection's bytes comes from the shard's I/O side
//! ([`crate::shard`]'s `io`: the read plan, output, closes).
//!
//! # Design
//! - [`event_loop`]: the shard loop, written once; a [`event_loop::Backend`]
//!   holds only what differs between backends (submit, wait, complete).
//! - [`uring`]: the default backend, one io_uring per shard, with its buffer
//!   [`pool`] and [`doorbell`].
//! - [`epoll`]: readiness I/O through mio, the fallback and A/B baseline.
//! - [`idle_spin`]: how long a shard keeps polling after it did work.
//! - [`probe`]: whether io_uring runs everything [`uring`] uses here.
//!
//! `unsafe` lives only in [`uring`], its [`probe`] and [`pool`], where the
//! kernel reads and writes memory the shard owns; each block states why it
//! holds. The other modules here deny it, like the rest of the crate.

#[deny(unsafe_code)]
pub(crate) mod doorbell;
#[deny(unsafe_code)]
pub(crate) mod epoll;
#[deny(unsafe_code)]
pub(crate) mod event_loop;
#[deny(unsafe_code)]
pub(crate) mod idle_spin;
pub(crate) mod pool;
pub(crate) mod probe;
pub(crate) mod uring;

use crate::config::Backend;
use crate::error::Error;
use crate::shard::ShardCore;

/// Picks the concrete backend: `Auto` probes io_uring ([`probe`]) and falls
/// back to epoll, returning why (logged by the caller, and exported as the
/// `fallback` label of `shoal_backend`).
pub(crate) fn resolve_backend(
    want: Backend,
) -> Result<(Backend, Option<probe::ProbeFailure>), Error> {
    match want {
        Backend::Epoll => Ok((Backend::Epoll, None)),
        Backend::IoUring => match probe::probe() {
            Ok(()) => Ok((Backend::IoUring, None)),
            Err(e) => Err(Error::IoUringUnavailable(e.to_string())),
        },
        Backend::Auto => match probe::probe() {
            Ok(()) => Ok((Backend::IoUring, None)),
            Err(e) => Ok((Backend::Epoll, Some(e))),
        },
    }
}

/// Runs one shard on `backend` until it shuts down.
pub(crate) fn run(core: ShardCore, backend: Backend, busy_poll: bool) -> std::io::Result<()> {
    match backend {
        Backend::IoUring => uring::run(core, busy_poll),
        _ => epoll::run(core, busy_poll),
    }
}

/// Pins the current thread to `core` (best effort).
pub(crate) fn pin_to_core(core: usize) {
    if let Some(ids) = core_affinity::get_core_ids() {
        if let Some(id) = ids.get(core % ids.len().max(1)) {
            if !core_affinity::set_for_current(*id) {
                tracing::warn!(core, "could not pin shard to core");
            }
        }
    }
}

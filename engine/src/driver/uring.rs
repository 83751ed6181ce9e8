//! io_uring driver (placeholder until the ring loop lands).
use crate::shard::ShardCore;

pub(crate) fn probe() -> Result<(), String> {
    Err("io_uring driver not built yet".into())
}

pub(crate) fn run(core: ShardCore, busy_poll: bool) -> std::io::Result<()> {
    super::epoll::run(core, busy_poll)
}

//! A bare shoal/1 client for benchmarks and tests: it completes a real
//! handshake over a blocking socket and hands back the socket and the
//! session keys, so the caller can hold an idle connection (`shoal bench
//! --scenario idle`) or seal records of any shape (the adversarial tests).
//! Not an API: no connection state machine, no keep-alives.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_crypto::{Handshake, Identity, PublicKey, Session};
use shoal_engine::Config;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Dials `addr` as `identity`, expecting `peer`, with the handshake
/// parameters of `config`; each read waits at most `read_timeout`.
pub fn dial(
    addr: SocketAddr,
    peer: &PublicKey,
    identity: Identity,
    config: &Config,
    read_timeout: Duration,
) -> io::Result<(TcpStream, Session)> {
    let (s, session, _) = handshake(addr, peer, identity, config, read_timeout, false)?;
    Ok((s, session))
}

/// Like [`dial`], but sends only the dialer's Hello: every later frame
/// (the key confirmation the dialee waits for) comes back unsent, so the
/// dialee keeps the connection handshaking until the caller writes them.
pub fn dial_held(
    addr: SocketAddr,
    peer: &PublicKey,
    identity: Identity,
    config: &Config,
    read_timeout: Duration,
) -> io::Result<(TcpStream, Session, Vec<Vec<u8>>)> {
    handshake(addr, peer, identity, config, read_timeout, true)
}

/// The dialer's side of a handshake; with `hold`, the frames after the
/// Hello are returned instead of written.
fn handshake(
    addr: SocketAddr,
    peer: &PublicKey,
    identity: Identity,
    config: &Config,
    read_timeout: Duration,
    hold: bool,
) -> io::Result<(TcpStream, Session, Vec<Vec<u8>>)> {
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(read_timeout))?;
    let hs_config = Arc::new(config.handshake_config());
    let mut hs = Handshake::dialer(identity, peer.clone(), hs_config, unix_ms());
    let mut held = Vec::new();
    let mut hello_sent = false;
    loop {
        while let Some(frame) = hs.poll_transmit() {
            if hold && hello_sent {
                held.push(frame);
            } else {
                s.write_all(&frame)?;
            }
        }
        hello_sent = true;
        if hs.is_complete() {
            let session = hs.into_session().map_err(|e| bad(e.to_string()))?;
            return Ok((s, session, held));
        }
        let mut header = [0u8; 4];
        s.read_exact(&mut header)?;
        let len = u32::from_be_bytes(header) as usize;
        if len == 0 || len > config.limits.max_frame_body {
            return Err(bad(format!("handshake frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)?;
        hs.handle_frame(&mut body, unix_ms(), &mut |k| k == peer)
            .map_err(|e| bad(e.to_string()))?;
    }
}

/// This process's resident set in KiB (Linux `/proc/self/status`).
pub fn rss_kib() -> io::Result<u64> {
    std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}

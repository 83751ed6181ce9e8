//! A bare shoal/1 dialer: it completes a real handshake over a blocking
//! socket and hands back the socket and the session keys.
//!
//! # Design
//! The sans-IO [`Handshake`] driven by blocking reads and writes, with the
//! handshake parameters of an engine [`Config`]. What the caller does with
//! the socket is up to it: hold it idle (the bench's idle and shard-rtt
//! crowd), seal records of any shape with the [`Session`] (the adversarial
//! tests), or stop after the Hello ([`dial_held`]).
//!
//! Not provided: a connection state machine, keep-alives, or frame reads
//! after the handshake.

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

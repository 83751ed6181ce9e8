//! Bounded zstd compression of whole messages (before chunking).
//!
//! # Design
//!
//! A channel configured for compression sends each message as one zstd frame
//! (`Data.compressed = true`); chunking then splits the compressed bytes. The
//! receiver reassembles, then calls [`decompress`] with the channel's maximum
//! message size. [`compress`] uses zstd's one-shot API, which records the
//! content size in the frame header and sizes the window to the message.
//!
//! [`decompress`] accepts exactly one standard zstd frame:
//!
//! 1. The input must start with the zstd magic number (skippable and legacy
//!    frames are refused) and [`find_frame_compressed_size`] — a walk over
//!    block headers, no decompression — must equal the input length, so
//!    trailing garbage and multiple concatenated frames are refused
//!    ([`DecompressError::TrailingData`]).
//! 2. If the header declares a content size, it is checked against
//!    `max_size` before anything is allocated ([`DecompressError::TooLarge`]);
//!    then the frame is decoded in one shot into a buffer of exactly that
//!    size (zstd itself verifies the declared size, and one-shot decoding
//!    uses the output as its window, so no window buffer is allocated).
//! 3. Without a declared size, the frame is streamed into a `Vec` that grows
//!    geometrically but never past `max_size + 1` bytes; reaching
//!    `max_size + 1` is [`DecompressError::TooLarge`]. The decoder's window is
//!    capped at the next power of two ≥ `max_size` (minimum 1 KiB), so a frame
//!    header asking for a 2 GiB window is refused instead of honoured.
//!    Consequence: a frame without a content size must have been compressed
//!    with a window no larger than that (a plain streaming encoder at level
//!    3 uses 2 MiB); [`compress`] always records the size, so this path only
//!    serves foreign encoders.
//!
//! # Security
//!
//! Provided: memory is bounded by `max_size` (output ≤ `max_size + 1` bytes,
//! window < `2 × max_size`, plus zstd's fixed-size context of a few hundred
//! KiB), whatever the input claims; decompression bombs fail as soon as the
//! output crosses the bound; every failure is a typed error.
//!
//! Not provided: CPU is bounded only by the input size and `max_size` (zstd
//! decodes at GB/s); no dictionary support; compression is not a secret-safe
//! operation (compressing attacker-influenced data next to secrets in one
//! message leaks through the ciphertext length, as with CRIME/BREACH), so
//! channels carrying secrets should not enable it.
//!
//! [`find_frame_compressed_size`]: zstd::zstd_safe::find_frame_compressed_size

use bytes::Bytes;
use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer};

/// The zstd frame magic number (little-endian on the wire).
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// zstd's smallest window log.
const MIN_WINDOW_LOG: u32 = 10;
/// zstd's largest window log on 64-bit targets.
const MAX_WINDOW_LOG: u32 = 31;
/// First allocation of the streaming path.
const STREAM_INITIAL: usize = 16 * 1024;

/// Why compression failed.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// zstd reported an error (e.g. an invalid level or out of memory).
    #[error("zstd compression failed: {0}")]
    Zstd(#[from] std::io::Error),
}

/// Why a compressed message was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecompressError {
    /// The message would inflate past the maximum size.
    #[error("decompressed message exceeds the maximum of {max} bytes")]
    TooLarge { max: usize },
    /// Not a single well-formed zstd frame.
    #[error("invalid zstd frame: {0}")]
    Invalid(&'static str),
    /// Bytes follow the zstd frame.
    #[error("trailing bytes after the zstd frame")]
    TrailingData,
    /// The input ends before the frame does.
    #[error("truncated zstd frame")]
    Truncated,
    /// zstd could not allocate its context.
    #[error("zstd context allocation failed")]
    Alloc,
}

/// Compresses `src` as one zstd frame at `level` (zstd levels; 0 means
/// zstd's default).
pub fn compress(level: i32, src: &[u8]) -> Result<Bytes, CompressError> {
    Ok(Bytes::from(zstd::bulk::compress(src, level)?))
}

fn zstd_err(code: zstd_safe::ErrorCode) -> DecompressError {
    DecompressError::Invalid(zstd_safe::get_error_name(code))
}

/// Decompresses one zstd frame, refusing ([`DecompressError::TooLarge`]) any
/// input that would inflate past `max_size` without ever allocating more
/// than about `max_size`. Trailing bytes and multiple frames are refused.
pub fn decompress(src: &[u8], max_size: usize) -> Result<Bytes, DecompressError> {
    let magic = src
        .get(..4)
        .and_then(|m| <[u8; 4]>::try_from(m).ok())
        .map(u32::from_le_bytes);
    match magic {
        None => return Err(DecompressError::Truncated),
        Some(ZSTD_MAGIC) => {}
        Some(_) => return Err(DecompressError::Invalid("not a zstd frame")),
    }
    if src.len() < frame_header_len(src) {
        return Err(DecompressError::Truncated);
    }
    let declared = match zstd_safe::get_frame_content_size(src) {
        Ok(size) => size,
        // Also returned for a header cut short.
        Err(_) => return Err(DecompressError::Invalid("bad frame header")),
    };
    if let Some(size) = declared {
        if size > max_size as u64 {
            return Err(DecompressError::TooLarge { max: max_size });
        }
    }
    match zstd_safe::find_frame_compressed_size(src) {
        Ok(n) if n == src.len() => {}
        Ok(n) if n < src.len() => return Err(DecompressError::TrailingData),
        Ok(_) => return Err(DecompressError::Truncated),
        // zstd reports a frame cut short as srcSize_wrong.
        Err(code) if zstd_safe::get_error_name(code).contains("Src size") => {
            return Err(DecompressError::Truncated)
        }
        Err(code) => return Err(zstd_err(code)),
    }
    let mut dctx = DCtx::try_create().ok_or(DecompressError::Alloc)?;
    match declared {
        Some(size) => one_shot(&mut dctx, src, size as usize),
        None => streaming(&mut dctx, src, max_size),
    }
}

/// Length of the frame header (magic included) announced by its descriptor
/// byte (RFC 8878 §3.1.1.1), or 5 when even the descriptor is missing.
fn frame_header_len(src: &[u8]) -> usize {
    let Some(&fhd) = src.get(4) else { return 5 };
    let single_segment = fhd & 0x20 != 0;
    let fcs_len = match fhd >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dict_len = [0, 1, 2, 4][usize::from(fhd & 0x03)];
    5 + usize::from(!single_segment) + dict_len + fcs_len
}

/// Decodes a frame with a declared (and already bounded) content size.
fn one_shot(dctx: &mut DCtx<'_>, src: &[u8], size: usize) -> Result<Bytes, DecompressError> {
    let mut out: Vec<u8> = Vec::with_capacity(size);
    let n = dctx.decompress(&mut out, src).map_err(zstd_err)?;
    if n != size || out.len() != size {
        return Err(DecompressError::Invalid("content size mismatch"));
    }
    Ok(Bytes::from(out))
}

/// Smallest window log whose window holds `max_size` bytes, within zstd's range.
fn window_log_for(max_size: usize) -> u32 {
    let bits = usize::BITS - max_size.saturating_sub(1).leading_zeros();
    bits.clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG)
}

/// Decodes a frame without a declared content size into a buffer capped at
/// `max_size + 1` bytes.
fn streaming(dctx: &mut DCtx<'_>, src: &[u8], max_size: usize) -> Result<Bytes, DecompressError> {
    dctx.set_parameter(DParameter::WindowLogMax(window_log_for(max_size)))
        .map_err(zstd_err)?;
    let cap = max_size.saturating_add(1);
    let mut out: Vec<u8> = Vec::with_capacity(cap.min(STREAM_INITIAL));
    let mut input = InBuffer::around(src);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= cap {
                return Err(DecompressError::TooLarge { max: max_size });
            }
            let target = cap.min(out.capacity().saturating_mul(2).max(STREAM_INITIAL));
            out.reserve_exact(target - out.len());
        }
        let before = out.len();
        let (hint, full) = {
            let mut ob = OutBuffer::around_pos(&mut out, before);
            let hint = dctx
                .decompress_stream(&mut ob, &mut input)
                .map_err(zstd_err)?;
            (hint, ob.pos() == ob.capacity())
        };
        if hint == 0 {
            break; // frame complete and fully flushed
        }
        if input.pos() == src.len() && !full && out.len() == before {
            // No input left, room for output, and no progress: zstd needs
            // bytes that are not there.
            return Err(DecompressError::Truncated);
        }
    }
    if out.len() > max_size {
        return Err(DecompressError::TooLarge { max: max_size });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: usize = 1024 * 1024;

    /// Streams `total` zero bytes through an encoder, never holding them all.
    fn zero_bomb(total: usize, with_size: bool) -> Vec<u8> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(with_size).unwrap();
        if with_size {
            enc.set_pledged_src_size(Some(total as u64)).unwrap();
        }
        let block = vec![0u8; MIB];
        for _ in 0..total / MIB {
            enc.write_all(&block).unwrap();
        }
        enc.finish().unwrap()
    }

    /// A frame without content size whose window fits `data` (a streaming
    /// encoder otherwise picks its level's window, 2 MiB at level 3).
    fn no_size_frame(data: &[u8]) -> Vec<u8> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.window_log(window_log_for(data.len())).unwrap();
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let msg: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let c = compress(3, &msg).unwrap();
        assert!(c.len() < msg.len());
        assert_eq!(
            zstd_safe::get_frame_content_size(&c).unwrap(),
            Some(msg.len() as u64)
        );
        assert_eq!(decompress(&c, msg.len()).unwrap(), msg);
        assert_eq!(
            decompress(&c, msg.len() - 1),
            Err(DecompressError::TooLarge { max: msg.len() - 1 })
        );
    }

    #[test]
    fn round_trip_empty() {
        let c = compress(0, b"").unwrap();
        assert_eq!(decompress(&c, 0).unwrap(), Bytes::new());
    }

    #[test]
    fn streaming_round_trip_and_exact_bound() {
        let msg: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 13) as u8).collect();
        let c = no_size_frame(&msg);
        assert_eq!(zstd_safe::get_frame_content_size(&c).unwrap(), None);
        assert_eq!(decompress(&c, msg.len()).unwrap(), msg);
        assert_eq!(decompress(&c, 10 * MIB).unwrap(), msg);
        assert_eq!(
            decompress(&c, msg.len() - 1),
            Err(DecompressError::TooLarge { max: msg.len() - 1 })
        );
    }

    #[test]
    fn bomb_with_declared_size_is_refused_early() {
        let bomb = zero_bomb(256 * MIB, true);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        assert_eq!(
            zstd_safe::get_frame_content_size(&bomb).unwrap(),
            Some(256 * MIB as u64)
        );
        assert_eq!(
            decompress(&bomb, 4 * MIB),
            Err(DecompressError::TooLarge { max: 4 * MIB })
        );
    }

    #[test]
    fn bomb_without_size_is_refused_at_the_bound() {
        let bomb = zero_bomb(256 * MIB, false);
        assert_eq!(zstd_safe::get_frame_content_size(&bomb).unwrap(), None);
        assert_eq!(
            decompress(&bomb, 4 * MIB),
            Err(DecompressError::TooLarge { max: 4 * MIB })
        );
    }

    #[test]
    fn no_size_frame_with_window_beyond_bound_is_refused() {
        // Level 3 streaming without a size picks a 2 MiB window: fine for a
        // 4 MiB bound, refused for a 64 KiB one (the decoder would allocate
        // the window before producing a byte).
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.write_all(&[3u8; 1000]).unwrap();
        let c = enc.finish().unwrap();
        assert_eq!(decompress(&c, 4 * MIB).unwrap(), vec![3u8; 1000]);
        assert!(matches!(
            decompress(&c, 64 * 1024),
            Err(DecompressError::Invalid(_))
        ));
    }

    #[test]
    fn huge_window_is_refused() {
        // A 64 MiB frame compressed with a 64 MiB window (long-distance
        // matching) cannot be streamed within a 1 MiB bound.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.window_log(26).unwrap();
        enc.write_all(&vec![1u8; 4 * MIB]).unwrap();
        let c = enc.finish().unwrap();
        assert!(decompress(&c, MIB).is_err());
    }

    #[test]
    fn trailing_data_and_concatenated_frames() {
        let mut c = compress(1, b"hello hello hello").unwrap().to_vec();
        let one = c.clone();
        c.push(0);
        assert_eq!(decompress(&c, 100), Err(DecompressError::TrailingData));
        let mut two = one.clone();
        two.extend_from_slice(&one);
        assert_eq!(decompress(&two, 100), Err(DecompressError::TrailingData));
    }

    #[test]
    fn truncated_and_garbage() {
        let c = compress(1, &[5u8; 10_000]).unwrap();
        let header = frame_header_len(&c);
        assert!((6..=18).contains(&header));
        for cut in (0..header).chain([header + 1, c.len() - 1]) {
            assert_eq!(
                decompress(&c[..cut], 100_000),
                Err(DecompressError::Truncated),
                "cut {cut}"
            );
        }
        let s = no_size_frame(&[5u8; 10_000]);
        assert!(decompress(&s[..s.len() - 1], 100_000).is_err());
        assert_eq!(decompress(b"", 10), Err(DecompressError::Truncated));
        assert_eq!(
            decompress(b"not zstd at all", 10),
            Err(DecompressError::Invalid("not a zstd frame"))
        );
        // A skippable frame is not a message.
        let skippable = [0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
        assert!(decompress(&skippable, 10).is_err());
    }

    #[test]
    fn window_log_bounds() {
        assert_eq!(window_log_for(0), 10);
        assert_eq!(window_log_for(1024), 10);
        assert_eq!(window_log_for(1025), 11);
        assert_eq!(window_log_for(4 * MIB), 22);
        assert_eq!(window_log_for(4 * MIB + 1), 23);
        assert_eq!(window_log_for(usize::MAX), 31);
    }
}

//! # shoal-wire
//!
//! The shoal/1 wire format with no I/O and no clock. One module per layer,
//! outermost first:
//!
//! - [`frame`]: `u32` big-endian length ‖ body; [`FrameDecoder`] splits a byte
//!   stream into bodies with the length checked before anything is reserved.
//! - [`record`]: a frame plaintext is one or more `kind ‖ varint len ‖ prost
//!   message` records; [`RecordWriter`] packs them within a budget,
//!   [`RecordReader`] decodes them zero-copy.
//! - [`message`]: the prost messages (`wire.proto` beside this crate is the
//!   human-readable spec), [`RecordKind`], [`CloseReason`], [`RpcStatus`].
//! - [`chunk`]: bounded reassembly of messages larger than one frame
//!   ([`ChunkAssembler`]).
//! - [`compress`](mod@compress): zstd per message, decompression bounded by the channel's
//!   maximum message size.
//! - [`stream`]: flow-controlled byte streams on a connection: their
//!   fixed-layout records (kind [`stream::STREAM_KIND`]) and the sans-IO
//!   [`stream::Streams`] state machine.
//!
//! # Design
//!
//! Every layer is a plain struct or function over byte buffers (`bytes`), so
//! the engine's drivers only move buffers and every rule here is tested
//! deterministically. Received payloads are `Bytes` slices of the opened
//! frame all the way up to the application (single-part messages are never
//! copied).
//!
//! # Security
//!
//! Hostile input is normal input: every decode path returns a typed error,
//! never panics, never indexes out of bounds and never allocates beyond a
//! bound stated in its module's docs. The crate forbids `unsafe`. What each
//! layer does *not* provide (authentication, semantic checks, timeouts) is
//! listed in its module docs. The `fuzzing` module (hidden, feature `fuzzing`) holds the fuzz
//! target bodies; `fuzz/` runs them under libFuzzer and `tests/corpus_replay.rs`
//! replays the committed corpus.
#![forbid(unsafe_code)]

pub mod chunk;
pub mod compress;
pub mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod message;
pub mod record;
pub mod stream;

pub use chunk::{parts_for, Assembled, ChunkAssembler, ChunkError, ChunkLimits};
pub use compress::{compress, decompress, CompressError, DecompressError};
pub use frame::{
    encode_header, try_encode_header, FrameDecoder, FrameError, ReadBuf, DEFAULT_MAX_FRAME_BODY,
    HEADER_LEN, TAG_LEN,
};
pub use message::*;
pub use record::{
    data_record_len, DataHeader, Record, RecordError, RecordFull, RecordReader, RecordWriter,
    MAX_DATA_OVERHEAD,
};

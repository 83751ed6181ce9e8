//! [`StreamConfig`]: the limits of one connection's streams, with ranges.

/// The limits of one connection's streams. Every field has a range, checked
/// by [`StreamConfig::validate`]; the receive-side fields are announced to
/// the peer in the `Limits` record and bound what the peer can make us hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Receive window per stream: the most bytes of one stream buffered
    /// before the application reads them. Range 1 KiB ..= 1 GiB; default
    /// 1 MiB. Credit is re-granted once half of it was read.
    pub stream_window: u64,
    /// Receive window of all streams together: the most stream bytes
    /// buffered on this connection. Range `stream_window` ..= 4 GiB;
    /// default 4 MiB.
    pub connection_window: u64,
    /// Most streams open at once in each direction: opened by the peer (it
    /// gets new credit only as old ones close) and opened by us. Range
    /// 1 ..= 4096; default 64.
    pub max_streams: u64,
    /// Largest payload of one `Data` record: how much stream data goes
    /// between two looks at the connection's high-priority messages.
    /// Range 256 B ..= 1 MiB; default 16 KiB. The connection also caps a
    /// record at what fits its frame (`poll_transmit`'s budget).
    pub max_record_payload: usize,
    /// Most bytes accepted by `write` and not yet handed to the connection,
    /// all streams together. Range 1 KiB ..= 1 GiB; default 1 MiB.
    pub send_buffer: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            stream_window: MIB,
            connection_window: 4 * MIB,
            max_streams: 64,
            max_record_payload: 16 * 1024,
            send_buffer: MIB,
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// A [`StreamConfig`] field out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("streams.{field} = {value} is out of range: must be within {lo} ..= {hi}")]
pub struct StreamConfigError {
    pub field: &'static str,
    pub value: u64,
    pub lo: u64,
    pub hi: u64,
}

fn within(field: &'static str, value: u64, lo: u64, hi: u64) -> Result<(), StreamConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(StreamConfigError {
            field,
            value,
            lo,
            hi,
        })
    }
}

impl StreamConfig {
    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<(), StreamConfigError> {
        within("stream_window", self.stream_window, KIB, GIB)?;
        within(
            "connection_window",
            self.connection_window,
            self.stream_window,
            4 * GIB,
        )?;
        within("max_streams", self.max_streams, 1, 4096)?;
        within(
            "max_record_payload",
            self.max_record_payload as u64,
            256,
            MIB,
        )?;
        within("send_buffer", self.send_buffer, KIB, GIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_each_bound_is_checked() {
        let d = StreamConfig::default();
        assert_eq!(d.validate(), Ok(()));
        let bad = [
            StreamConfig {
                stream_window: 1023,
                ..d
            },
            StreamConfig {
                stream_window: GIB + 1,
                connection_window: 4 * GIB,
                ..d
            },
            StreamConfig {
                connection_window: d.stream_window - 1,
                ..d
            },
            StreamConfig {
                max_streams: 0,
                ..d
            },
            StreamConfig {
                max_streams: 4097,
                ..d
            },
            StreamConfig {
                max_record_payload: 255,
                ..d
            },
            StreamConfig {
                send_buffer: 0,
                ..d
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let e = StreamConfig {
            max_streams: 0,
            ..d
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "streams.max_streams = 0 is out of range: must be within 1 ..= 4096"
        );
    }
}

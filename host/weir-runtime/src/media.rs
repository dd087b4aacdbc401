//! Host-side objects behind the WIT `media` resources.
//!
//! Bytes stay in host memory; guests hold handles and copy out only what they ask for.

use std::sync::Arc;

/// The most bytes one `read` call copies into guest memory.
pub const MAX_READ_BYTES: u32 = 1 << 20;

/// An opaque object held by the host (image, audio, model output).
#[derive(Debug, Clone)]
pub struct Blob {
    /// MIME type.
    pub content_type: String,
    /// The bytes, shared without copying.
    pub data: Arc<[u8]>,
}

/// A media segment of a stream held by the host.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Sequence number within its stream.
    pub seq: u64,
    /// Duration in milliseconds.
    pub duration_ms: u32,
    /// Container MIME type.
    pub content_type: String,
    /// The bytes, shared without copying.
    pub data: Arc<[u8]>,
}

/// Copy `[offset, offset + max)` of `data`, capped at [`MAX_READ_BYTES`] and the end of `data`.
pub(crate) fn read_range(data: &[u8], offset: u64, max: u32) -> Vec<u8> {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let len = max.min(MAX_READ_BYTES) as usize;
    let end = start.saturating_add(len).min(data.len());
    data[start..end].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_range_clamps_to_data_and_cap() {
        let data = vec![7u8; 10];
        assert_eq!(read_range(&data, 8, 100).len(), 2);
        assert_eq!(read_range(&data, 20, 5).len(), 0);
        assert_eq!(read_range(&data, u64::MAX, 5).len(), 0);
        let big = vec![1u8; (MAX_READ_BYTES as usize) * 2];
        assert_eq!(read_range(&big, 0, u32::MAX).len(), MAX_READ_BYTES as usize);
    }
}

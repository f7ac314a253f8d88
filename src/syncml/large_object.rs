//! Large objects (OMA-DM-NOTES.md §2): an item too big for one message travels as chunks, each
//! but the last marked `MoreData`, the first carrying `Meta/Size`. Pure.
//!
//! Convention (the spec leaves the b64 case loose; this is what field clients do): `Size` is the
//! size of the object itself (decoded bytes for Format b64), and each chunk of a b64 object is
//! base64 of its own slice of the bytes, so every chunk decodes alone.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::codes::StatusCode;
use super::message::Item;

/// One chunk to put in an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Base64 of this chunk's bytes.
    pub data: String,
    /// More chunks follow (`<MoreData/>`).
    pub more: bool,
    /// The whole object's size, on the first chunk only.
    pub size: Option<u64>,
}

/// Raw bytes per chunk so that a chunk's base64 fits in `budget` characters.
pub fn raw_per_chunk(budget: usize) -> usize {
    (budget / 4 * 3).max(3)
}

/// Splits `bytes` into b64 chunks of at most `raw_chunk` raw bytes each (at least one chunk).
pub fn split_b64(bytes: &[u8], raw_chunk: usize) -> Vec<Chunk> {
    let raw_chunk = raw_chunk.max(1);
    let total = bytes.len() as u64;
    if bytes.is_empty() {
        return vec![Chunk {
            data: String::new(),
            more: false,
            size: Some(0),
        }];
    }
    let n = bytes.len().div_ceil(raw_chunk);
    bytes
        .chunks(raw_chunk)
        .enumerate()
        .map(|(i, c)| Chunk {
            data: STANDARD.encode(c),
            more: i + 1 < n,
            size: (i == 0).then_some(total),
        })
        .collect()
}

/// Why reassembly stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LargeObjectError {
    #[error("the first chunk of a large object must carry Meta/Size")]
    MissingSize,
    #[error("the object's announced size {size} exceeds the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("the object was announced as {expected} bytes but {got} arrived")]
    SizeMismatch { expected: u64, got: u64 },
    #[error("a chunk's data is not valid base64")]
    BadData,
    #[error("a chunk for {got} arrived while {expected} was being reassembled")]
    WrongTarget { expected: String, got: String },
}

impl LargeObjectError {
    /// The status the receiver answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            LargeObjectError::MissingSize => StatusCode::IncompleteCommand,
            LargeObjectError::TooLarge { .. } => StatusCode::RequestedSizeTooBig,
            LargeObjectError::SizeMismatch { .. } => StatusCode::SizeMismatch,
            LargeObjectError::BadData => StatusCode::BadRequest,
            LargeObjectError::WrongTarget { .. } => StatusCode::IncompleteCommand,
        }
    }
}

/// Where reassembly stands after a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Buffered; answer 213 and wait for the next message.
    NeedMore,
    /// The whole object, of exactly the announced size.
    Complete(Vec<u8>),
}

/// Reassembles one object; memory never exceeds the announced (and limited) size.
#[derive(Debug)]
pub struct Reassembly {
    target: String,
    expected: u64,
    b64: bool,
    buf: Vec<u8>,
}

fn item_target(item: &Item) -> String {
    item.target
        .as_ref()
        .map(|t| t.uri.clone())
        .unwrap_or_default()
}

impl Reassembly {
    /// Starts from the first chunk (which must announce the size); `limit` is our MaxObjSize.
    pub fn start(first: &Item, limit: u64) -> Result<(Self, Progress), LargeObjectError> {
        let expected = first.meta.size.ok_or(LargeObjectError::MissingSize)?;
        if expected > limit {
            return Err(LargeObjectError::TooLarge {
                size: expected,
                limit,
            });
        }
        let mut r = Self {
            target: item_target(first),
            expected,
            b64: first.meta.format.as_deref() == Some("b64"),
            // Reserve lazily: a lying Size must not make us allocate up front.
            buf: Vec::new(),
        };
        let p = r.push(first)?;
        Ok((r, p))
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Adds a chunk.
    pub fn push(&mut self, item: &Item) -> Result<Progress, LargeObjectError> {
        let got_target = item_target(item);
        if !self.buf.is_empty() && got_target != self.target && !got_target.is_empty() {
            return Err(LargeObjectError::WrongTarget {
                expected: self.target.clone(),
                got: got_target,
            });
        }
        let text = item.data.as_deref().unwrap_or("");
        let bytes = if self.b64 {
            let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            STANDARD
                .decode(compact)
                .map_err(|_| LargeObjectError::BadData)?
        } else {
            text.as_bytes().to_vec()
        };
        let got = self.buf.len() as u64 + bytes.len() as u64;
        if got > self.expected {
            return Err(LargeObjectError::SizeMismatch {
                expected: self.expected,
                got,
            });
        }
        self.buf.extend_from_slice(&bytes);
        if item.more_data {
            return Ok(Progress::NeedMore);
        }
        if got != self.expected {
            return Err(LargeObjectError::SizeMismatch {
                expected: self.expected,
                got,
            });
        }
        Ok(Progress::Complete(std::mem::take(&mut self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syncml::message::Meta;
    use proptest::prelude::*;

    fn to_items(chunks: &[Chunk]) -> Vec<Item> {
        chunks
            .iter()
            .map(|c| Item {
                meta: Meta {
                    format: Some("b64".into()),
                    size: c.size,
                    ..Meta::default()
                },
                data: Some(c.data.clone()),
                more_data: c.more,
                ..Item::target("./SCOMO/Inventory/Delivered/p/Data")
            })
            .collect()
    }

    #[test]
    fn size_mismatch_is_424_and_too_large_is_416() {
        let mut items = to_items(&split_b64(&[7u8; 100], 30));
        items[0].meta.size = Some(99);
        let (mut r, _) = Reassembly::start(&items[0], 1000).unwrap();
        let mut res = Ok(Progress::NeedMore);
        for i in &items[1..] {
            res = r.push(i);
            if res.is_err() {
                break;
            }
        }
        let err = res.unwrap_err();
        assert_eq!(err.status(), StatusCode::SizeMismatch);
        let items = to_items(&split_b64(&[7u8; 100], 30));
        let err = Reassembly::start(&items[0], 50).unwrap_err();
        assert_eq!(err.status(), StatusCode::RequestedSizeTooBig);
        // Last chunk short of the announced size.
        let mut items = to_items(&split_b64(&[7u8; 100], 30));
        items[0].meta.size = Some(101);
        let (mut r, _) = Reassembly::start(&items[0], 1000).unwrap();
        let last = items.len() - 1;
        for i in &items[1..last] {
            assert_eq!(r.push(i), Ok(Progress::NeedMore));
        }
        assert_eq!(
            r.push(&items[last]),
            Err(LargeObjectError::SizeMismatch {
                expected: 101,
                got: 100
            })
        );
        let mut no_size = items[0].clone();
        no_size.meta.size = None;
        assert_eq!(
            Reassembly::start(&no_size, 1000).unwrap_err(),
            LargeObjectError::MissingSize
        );
    }

    proptest! {
        #[test]
        fn split_then_reassemble_is_identity(bytes in proptest::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..500) {
            let chunks = split_b64(&bytes, chunk);
            prop_assert!(chunks.iter().all(|c| STANDARD.decode(&c.data).unwrap().len() <= chunk));
            let items = to_items(&chunks);
            let (mut r, mut p) = Reassembly::start(&items[0], 1 << 20).unwrap();
            for i in &items[1..] {
                prop_assert_eq!(p, Progress::NeedMore);
                p = r.push(i).unwrap();
            }
            prop_assert_eq!(p, Progress::Complete(bytes));
        }
    }
}

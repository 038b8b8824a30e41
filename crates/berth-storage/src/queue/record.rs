//! A queued message as stored: a small binary header, then the payload.
//!
//! ```text
//! version 1 | attempts u32 | enqueued_at i64 | visible_at i64 | lease u128 (0: none)
//! | partition (u16 len) | idempotency key (u16 len, 0xFFFF: none)
//! | last error (u32 len, u32::MAX: none) | payload
//! ```
//! all big-endian. The same record is kept for a dead letter, where `visible_at` is when
//! it died and the last error is the reason.

use super::QueueError;

const VERSION: u8 = 1;
const NONE16: u16 = u16::MAX;
const NONE32: u32 = u32::MAX;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Header {
    pub attempts: u32,
    pub enqueued_at_ms: i64,
    pub visible_at_ms: i64,
    pub lease: u128,
    pub partition: String,
    pub idem: Option<String>,
    pub last_error: Option<String>,
}

pub(crate) fn encode(h: &Header, payload: &[u8]) -> Vec<u8> {
    let idem = h.idem.as_deref().map(|k| &k.as_bytes()[..k.len().min(NONE16 as usize - 1)]);
    let partition = &h.partition.as_bytes()[..h.partition.len().min(NONE16 as usize - 1)];
    let err = h.last_error.as_deref().map(str::as_bytes);
    let mut out = Vec::with_capacity(1 + 4 + 8 + 8 + 16 + 2 + partition.len() + 2 + idem.map_or(0, <[u8]>::len) + 4 + err.map_or(0, <[u8]>::len) + payload.len());
    out.push(VERSION);
    out.extend_from_slice(&h.attempts.to_be_bytes());
    out.extend_from_slice(&h.enqueued_at_ms.to_be_bytes());
    out.extend_from_slice(&h.visible_at_ms.to_be_bytes());
    out.extend_from_slice(&h.lease.to_be_bytes());
    out.extend_from_slice(&(partition.len() as u16).to_be_bytes());
    out.extend_from_slice(partition);
    match idem {
        Some(k) => {
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k);
        }
        None => out.extend_from_slice(&NONE16.to_be_bytes()),
    }
    match err {
        Some(e) => {
            let e = &e[..e.len().min(NONE32 as usize - 1)];
            out.extend_from_slice(&(e.len() as u32).to_be_bytes());
            out.extend_from_slice(e);
        }
        None => out.extend_from_slice(&NONE32.to_be_bytes()),
    }
    out.extend_from_slice(payload);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(b)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn text(&mut self, len: usize) -> Option<String> {
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// The header and where the payload starts.
pub(crate) fn decode_header(id: u64, bytes: &[u8]) -> Result<(Header, usize), QueueError> {
    let corrupt = || QueueError::Corrupt { id, why: "the stored record does not decode".into() };
    let mut r = Reader { bytes, at: 0 };
    if r.take(1).ok_or_else(corrupt)? != [VERSION] {
        return Err(QueueError::Corrupt { id, why: format!("unknown record version {:?}", bytes.first()) });
    }
    let attempts = u32::from_be_bytes(r.array().ok_or_else(corrupt)?);
    let enqueued_at_ms = i64::from_be_bytes(r.array().ok_or_else(corrupt)?);
    let visible_at_ms = i64::from_be_bytes(r.array().ok_or_else(corrupt)?);
    let lease = u128::from_be_bytes(r.array().ok_or_else(corrupt)?);
    let plen = u16::from_be_bytes(r.array().ok_or_else(corrupt)?) as usize;
    let partition = r.text(plen).ok_or_else(corrupt)?;
    let idem = match u16::from_be_bytes(r.array().ok_or_else(corrupt)?) {
        NONE16 => None,
        n => Some(r.text(n as usize).ok_or_else(corrupt)?),
    };
    let last_error = match u32::from_be_bytes(r.array().ok_or_else(corrupt)?) {
        NONE32 => None,
        n => Some(r.text(n as usize).ok_or_else(corrupt)?),
    };
    Ok((Header { attempts, enqueued_at_ms, visible_at_ms, lease, partition, idem, last_error }, r.at))
}

pub(crate) fn decode(id: u64, bytes: &[u8]) -> Result<(Header, Vec<u8>), QueueError> {
    let (h, at) = decode_header(id, bytes)?;
    Ok((h, bytes[at..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let h = Header {
            attempts: 3,
            enqueued_at_ms: 1_700_000_000_000,
            visible_at_ms: -5,
            lease: u128::MAX - 7,
            partition: "shop/sku-ü".into(),
            idem: Some("k1".into()),
            last_error: Some("platform said 500".into()),
        };
        let bytes = encode(&h, b"payload");
        assert_eq!(decode(1, &bytes).unwrap(), (h.clone(), b"payload".to_vec()));
        let bare = Header { idem: None, last_error: None, ..h };
        assert_eq!(decode(1, &encode(&bare, b"")).unwrap(), (bare, Vec::new()));
        for cut in [0, 1, 10, 40, 45] {
            assert!(matches!(decode(9, &bytes[..cut]), Err(QueueError::Corrupt { id: 9, .. })), "cut at {cut}");
        }
        let mut wrong = bytes.clone();
        wrong[0] = 7;
        assert!(matches!(decode(9, &wrong), Err(QueueError::Corrupt { .. })));
    }
}

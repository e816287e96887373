//! Framing and field reading shared by the frontend and backend decoders.
//!
//! A tagged message is split off the input buffer only once it is complete, after its announced
//! length was checked against a limit; fields are then read as `Bytes` slices of that one frame,
//! so decoding copies nothing. Reading never indexes: a short or malformed body is `None`, which
//! each decoder turns into an error naming its side. Nothing here knows message meanings.

use bytes::{Buf, Bytes, BytesMut};

/// Most bytes reserved ahead of an incomplete frame.
pub(crate) const RESERVE_AHEAD: usize = 64 * 1024;

/// Size of the tag byte plus the length word.
pub(crate) const HEADER_LEN: usize = 5;

/// The header of a tagged message once enough bytes are buffered to read it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) tag: u8,
    /// The length word: counts itself and the body, not the tag.
    pub(crate) len: usize,
}

/// Reads the header without consuming anything.
pub(crate) fn peek_header(buf: &[u8]) -> Option<Header> {
    let tag = *buf.first()?;
    let word: [u8; 4] = buf.get(1..HEADER_LEN)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(word)).ok()?;
    Some(Header { tag, len })
}

/// Splits a complete message whose header was validated; `None` while bytes are missing.
/// Returns the whole frame (tag and length included) and its body.
pub(crate) fn split_frame(buf: &mut BytesMut, header: Header) -> Option<(Bytes, Bytes)> {
    let total = header.len.checked_add(1)?;
    if buf.len() < total {
        // Reserve part of what this frame still needs so the next read does not regrow in small
        // steps, but never the whole announced length at once: memory then follows bytes the
        // peer actually sent, not a length it claimed (which may be up to the limit).
        buf.reserve(total.saturating_sub(buf.len()).min(RESERVE_AHEAD));
        return None;
    }
    let raw = buf.split_to(total).freeze();
    let body = raw.slice(HEADER_LEN.min(raw.len())..);
    Some((raw, body))
}

/// A cursor over one message body handing out zero-copy slices.
#[derive(Debug)]
pub(crate) struct Reader {
    body: Bytes,
}

impl Reader {
    pub(crate) fn new(body: Bytes) -> Self {
        Self { body }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.body.len()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        if self.body.is_empty() {
            return None;
        }
        Some(self.body.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        if self.body.len() < 2 {
            return None;
        }
        Some(self.body.get_u16())
    }

    pub(crate) fn i16(&mut self) -> Option<i16> {
        if self.body.len() < 2 {
            return None;
        }
        Some(self.body.get_i16())
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        if self.body.len() < 4 {
            return None;
        }
        Some(self.body.get_u32())
    }

    pub(crate) fn i32(&mut self) -> Option<i32> {
        if self.body.len() < 4 {
            return None;
        }
        Some(self.body.get_i32())
    }

    /// A NUL-terminated string, without its NUL.
    pub(crate) fn cstr(&mut self) -> Option<Bytes> {
        let end = memchr::memchr(0, &self.body)?;
        let s = self.body.split_to(end);
        self.body.advance(1);
        Some(s)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<Bytes> {
        if self.body.len() < n {
            return None;
        }
        Some(self.body.split_to(n))
    }

    /// A value prefixed by an `Int32` length where `-1` means NULL.
    pub(crate) fn nullable(&mut self) -> Option<Option<Bytes>> {
        let len = self.i32()?;
        if len == -1 {
            return Some(None);
        }
        let len = usize::try_from(len).ok()?;
        self.bytes(len).map(Some)
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }
}

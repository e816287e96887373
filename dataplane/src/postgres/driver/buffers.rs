//! How big a session's buffers are: what keeps an idle session small.
//!
//! A read hands the kernel a buffer of the size asked for, and that buffer belongs to the read
//! for as long as the peer stays silent; the buffers a pass fills keep their capacity after
//! they are written out. Asking every read for [`READ_CHUNK`] and keeping every capacity made
//! an idle session hold four buffers of 16 KiB or more. So:
//! - a read asks for [`SMALL_READ`] until one fills it: a peer with more to say gets
//!   [`READ_CHUNK`] from the next read on, and goes back to small once a read fits the small
//!   size again ([`ReadSize`], which TLS ciphertext reads use too);
//! - before a wait on the client alone, when everything is answered, a buffer that is empty
//!   but was grown past [`SMALL_READ`] is released ([`trim`]).
//!
//! Traffic of short statements and answers never grows a buffer past [`SMALL_READ`], so it
//! allocates nothing per pass; a large answer costs one allocation of its buffers per round
//! trip, which is small beside copying it. TLS sessions also keep rustls's state, its 4 KiB
//! record buffer and the ciphertext buffers of [`crate::transport`], sized the same way.

// A split of the driver: it shares the driver's imports and private items.
use super::*;
use crate::transport::ReadSize;

/// Bytes asked of a socket per read while its peer says little. Statements, answers of a few
/// rows and every startup and login message fit; a larger message takes one more read.
pub const SMALL_READ: usize = 2 * 1024;

/// A side's read size: small until a read fills it (see [`ReadSize`]).
pub(super) const fn read_size() -> ReadSize {
    ReadSize::new(SMALL_READ, READ_CHUNK)
}

/// Releases `buf`'s allocation when it holds no bytes and was grown past a small read. A
/// fresh `BytesMut` rather than a shrink: `BytesMut` remembers its original capacity and
/// would grow back to it on the next reserve.
pub(super) fn trim(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > SMALL_READ {
        *buf = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_releases_only_empty_grown_buffers() {
        let mut grown = BytesMut::with_capacity(READ_CHUNK);
        trim(&mut grown);
        assert_eq!(grown.capacity(), 0);

        let mut holding = BytesMut::with_capacity(READ_CHUNK);
        holding.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
        trim(&mut holding);
        assert!(
            holding.capacity() >= READ_CHUNK - 16,
            "bytes kept, room kept"
        );

        let mut small = BytesMut::with_capacity(SMALL_READ);
        trim(&mut small);
        assert_eq!(
            small.capacity(),
            SMALL_READ,
            "a small buffer is reused, not churned"
        );
    }
}

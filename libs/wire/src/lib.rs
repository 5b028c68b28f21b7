//! Frames and a field codec for OmenDB's internal protocols (compute ↔ safekeeper,
//! pageserver ↔ safekeeper, compute ↔ pageserver).
//!
//! A frame on the wire is:
//!
//! ```text
//! +-----------+-----------+---------+----------------------+
//! | len: u32  | crc: u32  | ver: u8 | payload (len-1 B)    |
//! +-----------+-----------+---------+----------------------+
//! ```
//!
//! `len` counts the version byte and the payload; `crc` is CRC32C over them. A frame longer
//! than the reader's limit, a checksum mismatch or an unknown version is an error, never a
//! panic. Payloads are built with [`Encoder`] and read back with [`Decoder`], whose every
//! read is bounds-checked.

use bytes::{BufMut, Bytes, BytesMut};
use ids::{Lsn, TenantId, TimelineId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the frame layout and of the message encodings inside it.
pub const FRAME_VERSION: u8 = 1;
/// The largest frame any internal protocol sends: a WAL chunk or a batch of rows.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Bytes read from the socket at a time while a frame arrives.
const READ_CHUNK_BYTES: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame checksum mismatch (expected {expected:08x}, got {actual:08x})")]
    Checksum { expected: u32, actual: u32 },
    #[error("unsupported frame version {0} (this build speaks {FRAME_VERSION})")]
    Version(u8),
    #[error("malformed message: {0}")]
    Malformed(String),
}

pub type Result<T> = std::result::Result<T, WireError>;

/// Reads one frame; `Ok(None)` on a clean end of stream before the first byte of a frame.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Bytes>> {
    let mut header = [0u8; 8];
    let mut filled = 0;
    while filled < header.len() {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        filled += n;
    }
    let len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
    if len == 0 {
        return Err(WireError::Malformed("empty frame".into()));
    }
    if len > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    // Grow the buffer as bytes arrive, so a peer that announces a large frame and stalls
    // costs no memory.
    let mut body = BytesMut::with_capacity(len.min(READ_CHUNK_BYTES));
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK_BYTES);
        let start = body.len();
        body.resize(start + want, 0);
        let n = reader.read(&mut body[start..]).await?;
        body.truncate(start + n);
        if n == 0 {
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    let actual = crc32c::crc32c(&body);
    if actual != crc {
        return Err(WireError::Checksum {
            expected: crc,
            actual,
        });
    }
    if body[0] != FRAME_VERSION {
        return Err(WireError::Version(body[0]));
    }
    let body = body.freeze();
    Ok(Some(body.slice(1..)))
}

/// Appends one frame holding `payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut BytesMut) {
    let len = payload.len() + 1;
    assert!(
        len <= FRAME_BYTES_MAX,
        "frame of {len} bytes exceeds the limit"
    );
    let mut crc = crc32c::crc32c(&[FRAME_VERSION]);
    crc = crc32c::crc32c_append(crc, payload);
    out.reserve(8 + len);
    out.put_u32(len as u32);
    out.put_u32(crc);
    out.put_u8(FRAME_VERSION);
    out.put_slice(payload);
}

/// Writes one frame and flushes the writer.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, payload: &[u8]) -> Result<()> {
    let mut out = BytesMut::new();
    encode_frame(payload, &mut out);
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

/// Builds a message payload field by field (big-endian integers, length-prefixed bytes).
#[derive(Default)]
pub struct Encoder {
    pub buf: BytesMut,
}

impl Encoder {
    pub fn new(tag: u8) -> Encoder {
        let mut encoder = Encoder::default();
        encoder.u8(tag);
        encoder
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.put_u8(v);
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v as u8)
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.put_u32(v);
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.put_u64(v);
        self
    }
    pub fn lsn(&mut self, v: Lsn) -> &mut Self {
        self.u64(v.0)
    }
    pub fn timeline(&mut self, v: TimelineId) -> &mut Self {
        self.buf.put_slice(&v.0);
        self
    }
    pub fn tenant(&mut self, v: TenantId) -> &mut Self {
        self.buf.put_slice(&v.0);
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.put_u32(v.len() as u32);
        self.buf.put_slice(v);
        self
    }
    pub fn opt_bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => self.u8(1).bytes(v),
        }
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Reads a payload built by [`Encoder`]; every read checks the remaining length.
pub struct Decoder<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Decoder<'a> {
    /// `what` names the message for error texts.
    pub fn new(bytes: &'a [u8], what: &'static str) -> Decoder<'a> {
        Decoder { bytes, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(WireError::Malformed(format!(
                "{}: needed {n} more bytes, {} left",
                self.what,
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(WireError::Malformed(format!(
                "{}: bad boolean {b}",
                self.what
            ))),
        }
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn lsn(&mut self) -> Result<Lsn> {
        Ok(Lsn(self.u64()?))
    }
    pub fn timeline(&mut self) -> Result<TimelineId> {
        Ok(TimelineId(self.take(16)?.try_into().expect("16 bytes")))
    }
    pub fn tenant(&mut self) -> Result<TenantId> {
        Ok(TenantId(self.take(16)?.try_into().expect("16 bytes")))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    pub fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            b => Err(WireError::Malformed(format!(
                "{}: bad option tag {b}",
                self.what
            ))),
        }
    }
    pub fn str(&mut self) -> Result<&'a str> {
        let what = self.what;
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| WireError::Malformed(format!("{what}: string is not UTF-8")))
    }
    /// The count of a following list, bounded by what the remaining bytes could hold.
    pub fn count(&mut self, min_item_bytes: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.bytes.len() {
            return Err(WireError::Malformed(format!(
                "{}: list of {n} items too long",
                self.what
            )));
        }
        Ok(n)
    }
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }
    /// Checks that the whole payload was consumed.
    pub fn finish(self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed(format!(
                "{}: {} trailing bytes",
                self.what,
                self.bytes.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip_and_corruption() {
        let mut out = BytesMut::new();
        encode_frame(b"hello", &mut out);
        encode_frame(b"", &mut out);
        let mut reader: &[u8] = &out;
        assert_eq!(
            read_frame(&mut reader).await.unwrap().unwrap(),
            &b"hello"[..]
        );
        assert_eq!(read_frame(&mut reader).await.unwrap().unwrap(), &b""[..]);
        assert!(read_frame(&mut reader).await.unwrap().is_none());

        let mut corrupt = out.to_vec();
        corrupt[10] ^= 0x01;
        let mut reader: &[u8] = &corrupt;
        assert!(matches!(
            read_frame(&mut reader).await,
            Err(WireError::Checksum { .. })
        ));

        let truncated = &out[..7];
        let mut reader: &[u8] = truncated;
        assert!(read_frame(&mut reader).await.is_err());

        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX);
        huge.put_u32(0);
        let mut reader: &[u8] = &huge;
        assert!(matches!(
            read_frame(&mut reader).await,
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn decoder_checks_bounds() {
        let mut encoder = Encoder::new(7);
        encoder.u64(42).str("abc").opt_bytes(None).bool(true);
        let payload = encoder.finish();
        let mut decoder = Decoder::new(&payload, "test");
        assert_eq!(decoder.u8().unwrap(), 7);
        assert_eq!(decoder.u64().unwrap(), 42);
        assert_eq!(decoder.str().unwrap(), "abc");
        assert_eq!(decoder.opt_bytes().unwrap(), None);
        assert!(decoder.bool().unwrap());
        decoder.finish().unwrap();

        for cut in 0..payload.len() {
            let mut decoder = Decoder::new(&payload[..cut], "test");
            let result = (|| -> Result<()> {
                decoder.u8()?;
                decoder.u64()?;
                decoder.str()?;
                decoder.opt_bytes()?;
                decoder.bool()?;
                Ok(())
            })();
            assert!(result.is_err(), "cut at {cut} must fail");
        }
        let mut decoder = Decoder::new(&[0xff, 0xff, 0xff, 0xff], "test");
        assert!(decoder.count(1).is_err());
    }
}

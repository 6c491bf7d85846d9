//! A bounds-checked cursor over one message's bytes. Every read either succeeds or returns a
//! [`DecodeError::Truncated`] naming the offset; nothing here can panic or over-allocate.

use crate::DecodeError;
use bytes::Bytes;

pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    pub(crate) kind: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a Bytes, pos: usize, kind: &'static str) -> Self {
        Reader { buf, pos, kind }
    }

    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.remaining() < n {
            Err(DecodeError::Truncated {
                kind: self.kind,
                offset: self.pos,
                needed: n - self.remaining(),
            })
        } else {
            Ok(())
        }
    }

    pub(crate) fn invalid(&self, offset: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            kind: self.kind,
            offset,
            reason: reason.into(),
        }
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        let v = self.buf[self.pos];
        self.pos += 1;
        Ok(v)
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        let v = u16::from_be_bytes([self.buf[self.pos], self.buf[self.pos + 1]]);
        self.pos += 2;
        Ok(v)
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.buf[self.pos..self.pos + 4]);
        self.pos += 4;
        Ok(u32::from_be_bytes(a))
    }

    #[inline]
    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        self.u32().map(|v| v as i32)
    }

    #[inline]
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.buf[self.pos..self.pos + 8]);
        self.pos += 8;
        Ok(u64::from_be_bytes(a))
    }

    #[inline]
    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        self.u64().map(|v| v as i64)
    }

    /// `n` bytes as a zero-copy slice of the message buffer.
    #[inline]
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// Skips `n` bytes and returns the offset where they start.
    #[inline]
    pub(crate) fn skip(&mut self, n: usize) -> Result<usize, DecodeError> {
        self.need(n)?;
        let start = self.pos;
        self.pos += n;
        Ok(start)
    }

    /// The whole message.
    pub(crate) fn buffer(&self) -> &'a Bytes {
        self.buf
    }

    /// A NUL-terminated UTF-8 string (the terminator is consumed, not returned).
    pub(crate) fn cstring(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                offset: start,
                needed: 1,
            });
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|e| self.invalid(start, format!("string is not valid UTF-8: {e}")))?
            .to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                kind: self.kind,
                offset: self.pos,
                extra: self.remaining(),
            });
        }
        Ok(())
    }
}

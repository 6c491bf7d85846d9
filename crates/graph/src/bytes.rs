//! The one reader of graphsync's own little-endian binary formats (node keys and values,
//! the row index, spilled changes): every read is checked against the bytes left, and a
//! failure is a [`Corrupt`] naming what was being read and where.
//!
//! Not for pgoutput (its decoder has its own reader and errors) or rkyv archives.

/// Bytes that do not decode: what was being read, at which offset of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt data: {what} at byte {offset}")]
pub struct Corrupt {
    /// What was being read (or what was wrong).
    pub what: &'static str,
    /// Offset in the input where it was.
    pub offset: usize,
}

/// A cursor over a byte slice.
#[derive(Debug, Clone)]
pub struct ByteReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        ByteReader { bytes, at: 0 }
    }

    /// Bytes read so far.
    pub fn offset(&self) -> usize {
        self.at
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// The bytes left, without reading them.
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }

    /// A [`Corrupt`] at the current offset.
    pub fn corrupt(&self, what: &'static str) -> Corrupt {
        Corrupt { what, offset: self.at }
    }

    /// The next `n` bytes (`what` names them in the error if fewer are left).
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Corrupt> {
        if self.remaining() < n {
            return Err(self.corrupt(what));
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), Corrupt> {
        self.take(n, what).map(|_| ())
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Corrupt> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, Corrupt> {
        Ok(self.take(1, what)?[0])
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, Corrupt> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, Corrupt> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, Corrupt> {
        self.array(what).map(i64::from_le_bytes)
    }

    /// A little-endian `f64`.
    pub fn f64(&mut self, what: &'static str) -> Result<f64, Corrupt> {
        self.array(what).map(f64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_names_what_is_missing() {
        let mut r = ByteReader::new(&[1, 2, 0, 0, 0, 9]);
        assert_eq!(r.u8("tag"), Ok(1));
        assert_eq!(r.u32("count"), Ok(2));
        assert_eq!(r.remaining(), 1);
        assert_eq!(
            r.u64("weight"),
            Err(Corrupt {
                what: "weight",
                offset: 5
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.u8("last"), Ok(9));
        assert!(r.take(1, "more").is_err());
    }
}

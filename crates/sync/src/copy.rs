//! Reading `COPY ... TO STDOUT (FORMAT binary)` output into tuples.
//!
//! The binary COPY format is a signature and header, then per row a 16-bit field count and per
//! field a 32-bit length (-1 for NULL) and the value in the type's binary send format: the same
//! encoding pgoutput's `binary` option uses, so copied rows become [`TupleData`] of binary
//! columns and are typed by the same code as streamed rows. A trailer (field count -1) ends
//! the data. Input may arrive in chunks that split rows anywhere.
//!
//! Pure: no I/O. Not for text-format COPY.

use bytes::{Buf, Bytes, BytesMut};
use pgoutput::{ColumnData, TupleData};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Malformed COPY data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// The data does not start with the binary COPY signature.
    #[error("COPY output is not in binary format (bad signature)")]
    BadSignature,
    /// A row has a different number of fields than the columns copied.
    #[error("COPY row has {got} fields, expected {expected}")]
    FieldCount {
        /// Fields in the row.
        got: i16,
        /// Columns copied.
        expected: usize,
    },
    /// A field length is negative (other than -1).
    #[error("COPY field has invalid length {0}")]
    BadLength(i32),
    /// Data after the trailer, or the data ended inside a row.
    #[error("COPY data {0}")]
    Framing(&'static str),
}

/// Incremental parser of one table's binary COPY output.
#[derive(Debug)]
pub struct CopyReader {
    buf: BytesMut,
    columns: usize,
    header_done: bool,
    finished: bool,
}

impl CopyReader {
    /// A reader for rows of `columns` fields.
    pub fn new(columns: usize) -> Self {
        CopyReader {
            buf: BytesMut::new(),
            columns,
            header_done: false,
            finished: false,
        }
    }

    /// Adds a chunk and calls `row` for every complete row it finishes.
    pub fn push<E: From<CopyError>>(
        &mut self,
        chunk: &[u8],
        mut row: impl FnMut(TupleData) -> Result<(), E>,
    ) -> Result<(), E> {
        self.buf.extend_from_slice(chunk);
        loop {
            if !self.header_done {
                if self.buf.len() < 19 {
                    return Ok(());
                }
                if &self.buf[..11] != SIGNATURE {
                    return Err(CopyError::BadSignature.into());
                }
                let ext = u32::from_be_bytes([self.buf[15], self.buf[16], self.buf[17], self.buf[18]]) as usize;
                if self.buf.len() < 19 + ext {
                    return Ok(());
                }
                self.buf.advance(19 + ext);
                self.header_done = true;
            }
            if self.buf.len() < 2 {
                return Ok(());
            }
            let fields = i16::from_be_bytes([self.buf[0], self.buf[1]]);
            if fields == -1 {
                self.finished = true;
                self.buf.advance(2);
                if !self.buf.is_empty() {
                    return Err(CopyError::Framing("continues after the trailer").into());
                }
                return Ok(());
            }
            if self.finished {
                return Err(CopyError::Framing("continues after the trailer").into());
            }
            if fields < 0 || fields as usize != self.columns {
                return Err(CopyError::FieldCount {
                    got: fields,
                    expected: self.columns,
                }
                .into());
            }
            // Find the row's end without consuming, so a partial row waits for more input.
            let mut at = 2;
            let mut complete = true;
            for _ in 0..fields {
                if self.buf.len() < at + 4 {
                    complete = false;
                    break;
                }
                let len = i32::from_be_bytes([self.buf[at], self.buf[at + 1], self.buf[at + 2], self.buf[at + 3]]);
                at += 4;
                if len == -1 {
                    continue;
                }
                if len < 0 {
                    return Err(CopyError::BadLength(len).into());
                }
                at += len as usize;
                if self.buf.len() < at {
                    complete = false;
                    break;
                }
            }
            if !complete {
                return Ok(());
            }
            let rowbytes: Bytes = self.buf.split_to(at).freeze();
            let mut cols = Vec::with_capacity(self.columns);
            let mut p = 2;
            for _ in 0..fields {
                let len = i32::from_be_bytes([rowbytes[p], rowbytes[p + 1], rowbytes[p + 2], rowbytes[p + 3]]);
                p += 4;
                if len == -1 {
                    cols.push(ColumnData::Null);
                } else {
                    cols.push(ColumnData::Binary(rowbytes.slice(p..p + len as usize)));
                    p += len as usize;
                }
            }
            row(TupleData::from_columns(cols))?;
        }
    }

    /// Checks the data ended cleanly (trailer seen, nothing left over).
    pub fn finish(&self) -> Result<(), CopyError> {
        if !self.finished || !self.buf.is_empty() {
            return Err(CopyError::Framing("ended before its trailer"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        for r in rows {
            v.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        v.extend_from_slice(b);
                    }
                }
            }
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    #[test]
    fn rows_split_anywhere() {
        let data = encode(&[
            vec![Some(&1i32.to_be_bytes()[..]), None],
            vec![Some(&2i32.to_be_bytes()[..]), Some(b"hello")],
        ]);
        for chunk in 1..data.len() {
            let mut r = CopyReader::new(2);
            let mut got = Vec::new();
            for c in data.chunks(chunk) {
                r.push::<CopyError>(c, |t| {
                    got.push((0..t.len()).map(|i| t.column_data(i).unwrap()).collect::<Vec<_>>());
                    Ok(())
                })
                .unwrap();
            }
            r.finish().unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[0][1], ColumnData::Null);
            assert_eq!(got[1][1], ColumnData::Binary(Bytes::from_static(b"hello")));
        }
    }

    #[test]
    fn malformed() {
        let mut r = CopyReader::new(2);
        assert_eq!(
            r.push::<CopyError>(b"PGCOPY\nXXXXXXXXXXXXXXXXXX", |_| Ok(())),
            Err(CopyError::BadSignature)
        );
        let data = encode(&[vec![None]]);
        let mut r = CopyReader::new(2);
        assert!(matches!(
            r.push::<CopyError>(&data, |_| Ok(())),
            Err(CopyError::FieldCount { got: 1, expected: 2 })
        ));
        let data = encode(&[vec![None, None]]);
        let mut r = CopyReader::new(2);
        r.push::<CopyError>(&data[..data.len() - 2], |_| Ok(())).unwrap();
        assert!(r.finish().is_err());
    }
}

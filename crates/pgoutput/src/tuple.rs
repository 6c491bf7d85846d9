//! A row's columns as pgoutput sends them: one validated, shared slice of the message, walked
//! on demand (no allocation per row), with zero-copy column values.
//!
//! Not for typing values (`crate::value`) or decoding messages (`crate::message`).

use bytes::Bytes;

/// A tuple's columns as sent: a zero-copy slice of the message holding exactly this tuple's
/// column entries, validated when decoded. Columns are walked on demand, so decoding a row
/// costs one reference count and no allocation; [`TupleData::column_data`] hands out
/// zero-copy slices.
#[derive(Clone, Default)]
pub struct TupleData {
    /// The column entries (kind byte, and for text/binary a length and the bytes), without the
    /// leading column count.
    pub(crate) buf: Bytes,
    pub(crate) natts: u16,
}

/// One column of a tuple, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnRef<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change; the server did not send it.
    UnchangedToast,
    /// The type's text output.
    Text(&'a [u8]),
    /// The type's binary send format (`binary` option).
    Binary(&'a [u8]),
}

/// One column of a tuple, owning (a zero-copy slice of) its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnData {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change; the server did not send it.
    UnchangedToast,
    /// The type's text output.
    Text(Bytes),
    /// The type's binary send format (`binary` option).
    Binary(Bytes),
}

impl TupleData {
    /// Builds a tuple from owned columns (for tests, tools and encoders).
    pub fn from_columns(columns: impl IntoIterator<Item = ColumnData>) -> Self {
        let mut buf = Vec::new();
        let mut natts = 0u16;
        for c in columns {
            natts += 1;
            match &c {
                ColumnData::Null => buf.push(b'n'),
                ColumnData::UnchangedToast => buf.push(b'u'),
                ColumnData::Text(b) | ColumnData::Binary(b) => {
                    buf.push(if matches!(c, ColumnData::Text(_)) { b't' } else { b'b' });
                    buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    buf.extend_from_slice(b);
                }
            }
        }
        TupleData {
            buf: Bytes::from(buf),
            natts,
        }
    }

    /// Rebuilds a tuple from the entries of [`TupleData::buffer`] and its column count (as
    /// spilled to disk), checking that exactly `natts` well-formed entries fill `buf`.
    pub fn from_entries(buf: Bytes, natts: u16) -> Option<Self> {
        let mut rest: &[u8] = &buf;
        for _ in 0..natts {
            let (&kind, r) = rest.split_first()?;
            rest = match kind {
                b'n' | b'u' => r,
                b't' | b'b' => {
                    let len = u32::from_be_bytes(r.get(..4)?.try_into().ok()?) as usize;
                    r.get(4 + len..)?
                }
                _ => return None,
            };
        }
        rest.is_empty().then_some(TupleData { buf, natts })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        usize::from(self.natts)
    }

    /// Whether the tuple has no columns.
    pub fn is_empty(&self) -> bool {
        self.natts == 0
    }

    /// Column `i`, borrowed (walks the columns before it).
    pub fn column(&self, i: usize) -> Option<ColumnRef<'_>> {
        self.columns().nth(i)
    }

    /// All columns, borrowed, in order.
    pub fn columns(&self) -> Columns<'_> {
        Columns {
            rest: &self.buf,
            left: self.natts,
        }
    }

    /// Column `i` as an owned zero-copy slice of the message.
    pub fn column_data(&self, i: usize) -> Option<ColumnData> {
        self.column(i).map(|c| self.own(c))
    }

    /// Turns a borrowed column of this tuple into an owned zero-copy slice.
    pub fn own(&self, c: ColumnRef<'_>) -> ColumnData {
        match c {
            ColumnRef::Null => ColumnData::Null,
            ColumnRef::UnchangedToast => ColumnData::UnchangedToast,
            ColumnRef::Text(b) => ColumnData::Text(self.buf.slice_ref(b)),
            ColumnRef::Binary(b) => ColumnData::Binary(self.buf.slice_ref(b)),
        }
    }

    /// The bytes the columns point into.
    pub fn buffer(&self) -> &Bytes {
        &self.buf
    }

    /// The same tuple in an allocation of its own: holding it no longer keeps alive the
    /// message, or the whole network read buffer, it was sliced from. For tuples kept long
    /// (a streamed transaction buffered until its commit).
    pub fn detached(&self) -> TupleData {
        TupleData {
            buf: Bytes::copy_from_slice(&self.buf),
            natts: self.natts,
        }
    }
}

/// Iterator over a tuple's columns.
#[derive(Debug, Clone)]
pub struct Columns<'a> {
    rest: &'a [u8],
    left: u16,
}

impl<'a> Iterator for Columns<'a> {
    type Item = ColumnRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<ColumnRef<'a>> {
        // The entries were validated when the tuple was decoded or built; the `?`s below only
        // end the iteration, they cannot fire on a tuple this crate made.
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (&kind, rest) = self.rest.split_first()?;
        match kind {
            b'n' => {
                self.rest = rest;
                Some(ColumnRef::Null)
            }
            b'u' => {
                self.rest = rest;
                Some(ColumnRef::UnchangedToast)
            }
            _ => {
                let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let data = rest.get(4..4 + len)?;
                self.rest = &rest[4 + len..];
                Some(if kind == b't' {
                    ColumnRef::Text(data)
                } else {
                    ColumnRef::Binary(data)
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for Columns<'_> {}

impl PartialEq for TupleData {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.columns().eq(other.columns())
    }
}

impl Eq for TupleData {}

impl std::fmt::Debug for TupleData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.columns()).finish()
    }
}

//! Typed column values, converted from the text or binary form the server sends according to
//! the column's type OID.
//!
//! Built-in types get native values; text-like values stay zero-copy slices of the message.
//! Temporal types keep PostgreSQL's own text form (binary input is rendered into that form),
//! because re-rendering a `timestamptz` would lose the offset the server printed.

use crate::message::{ColumnData, ColumnRef, TupleData};
use crate::relation::Relation;
use crate::time::{format_date, format_timestamp};
use crate::DecodeError;
use bytes::Bytes;
use std::fmt;

/// Type OIDs of the built-in types the decoder converts (from `pg_type.dat`).
pub mod oid {
    #![allow(missing_docs)]
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;

    pub const BOOL_ARRAY: u32 = 1000;
    pub const BYTEA_ARRAY: u32 = 1001;
    pub const NAME_ARRAY: u32 = 1003;
    pub const INT2_ARRAY: u32 = 1005;
    pub const INT4_ARRAY: u32 = 1007;
    pub const TEXT_ARRAY: u32 = 1009;
    pub const BPCHAR_ARRAY: u32 = 1014;
    pub const VARCHAR_ARRAY: u32 = 1015;
    pub const INT8_ARRAY: u32 = 1016;
    pub const FLOAT4_ARRAY: u32 = 1021;
    pub const FLOAT8_ARRAY: u32 = 1022;
    pub const TIMESTAMP_ARRAY: u32 = 1115;
    pub const DATE_ARRAY: u32 = 1182;
    pub const TIMESTAMPTZ_ARRAY: u32 = 1185;
    pub const NUMERIC_ARRAY: u32 = 1231;
    pub const UUID_ARRAY: u32 = 2951;
    pub const JSON_ARRAY: u32 = 199;
    pub const JSONB_ARRAY: u32 = 3807;

    /// The element type of a supported one-dimensional array type.
    pub fn array_element(array: u32) -> Option<u32> {
        Some(match array {
            BOOL_ARRAY => BOOL,
            BYTEA_ARRAY => BYTEA,
            NAME_ARRAY => NAME,
            INT2_ARRAY => INT2,
            INT4_ARRAY => INT4,
            TEXT_ARRAY => TEXT,
            BPCHAR_ARRAY => BPCHAR,
            VARCHAR_ARRAY => VARCHAR,
            INT8_ARRAY => INT8,
            FLOAT4_ARRAY => FLOAT4,
            FLOAT8_ARRAY => FLOAT8,
            TIMESTAMP_ARRAY => TIMESTAMP,
            DATE_ARRAY => DATE,
            TIMESTAMPTZ_ARRAY => TIMESTAMPTZ,
            NUMERIC_ARRAY => NUMERIC,
            UUID_ARRAY => UUID,
            JSON_ARRAY => JSON,
            JSONB_ARRAY => JSONB,
            _ => return None,
        })
    }
}

/// UTF-8 text held in a (usually shared, zero-copy) [`Bytes`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PgText(Bytes);

impl PgText {
    /// Wraps `b` after checking it is UTF-8.
    pub fn from_utf8(b: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&b)?;
        Ok(PgText(b))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY-free: validated at construction; fall back to "" can never happen.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<String> for PgText {
    fn from(s: String) -> Self {
        PgText(Bytes::from(s.into_bytes()))
    }
}

impl From<&'static str> for PgText {
    fn from(s: &'static str) -> Self {
        PgText(Bytes::from_static(s.as_bytes()))
    }
}

impl fmt::Debug for PgText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for PgText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed column: the server did not send it; keep the value already held.
    UnchangedToast,
    /// `bool`.
    Bool(bool),
    /// `int2`.
    Int2(i16),
    /// `int4`.
    Int4(i32),
    /// `int8`.
    Int8(i64),
    /// `float4`.
    Float4(f32),
    /// `float8`.
    Float8(f64),
    /// `numeric`, exact, as PostgreSQL prints it (`12.3400`, `NaN`, `Infinity`).
    Numeric(PgText),
    /// `text`, `varchar`, `bpchar`, `name`.
    Text(PgText),
    /// `uuid`.
    Uuid([u8; 16]),
    /// `json`, as sent.
    Json(PgText),
    /// `jsonb`, as sent.
    Jsonb(PgText),
    /// `bytea`, decoded.
    Bytea(Bytes),
    /// `date`, in PostgreSQL's text form.
    Date(PgText),
    /// `timestamp`, in PostgreSQL's text form.
    Timestamp(PgText),
    /// `timestamptz`, in PostgreSQL's text form.
    TimestampTz(PgText),
    /// A one-dimensional array of one of the types above.
    Array(Vec<Value>),
    /// Any other type, in its text form.
    Other {
        /// Type OID.
        type_oid: u32,
        /// Text output of the type.
        text: PgText,
    },
    /// Any other type sent in binary form.
    OtherBinary {
        /// Type OID.
        type_oid: u32,
        /// Binary send format.
        data: Bytes,
    },
}

impl Value {
    /// Lower-case hyphenated text form of a UUID.
    pub fn format_uuid(u: &[u8; 16]) -> String {
        let mut s = String::with_capacity(36);
        for (i, b) in u.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `\x…` hex text form of bytes, as PostgreSQL prints `bytea`.
pub fn bytea_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("\\x");
    for &x in b {
        s.push(HEX[(x >> 4) as usize] as char);
        s.push(HEX[(x & 15) as usize] as char);
    }
    s
}

impl Relation {
    /// Converts a tuple of this relation into typed values, one per column.
    pub fn typed_values(&self, tuple: &TupleData, kind: &'static str) -> Result<Vec<Value>, DecodeError> {
        let mut out = Vec::with_capacity(tuple.len());
        self.typed_values_into(tuple, kind, &mut out)?;
        Ok(out)
    }

    /// As [`Relation::typed_values`], appending to `out` after clearing it, so a hot loop can
    /// reuse one allocation for every row.
    pub fn typed_values_into(
        &self,
        tuple: &TupleData,
        kind: &'static str,
        out: &mut Vec<Value>,
    ) -> Result<(), DecodeError> {
        out.clear();
        if tuple.len() != self.columns.len() {
            return Err(DecodeError::ColumnCountMismatch {
                kind,
                relation: self.qualified_name(),
                got: tuple.len(),
                expected: self.columns.len(),
            });
        }
        out.reserve(tuple.len());
        let owner = tuple.buffer();
        for (col, data) in self.columns.iter().zip(tuple.columns()) {
            match typed_value_in(data, col.type_oid, owner) {
                Ok(v) => out.push(v),
                Err(reason) => {
                    return Err(DecodeError::InvalidValue {
                        column: col.name.clone(),
                        type_oid: col.type_oid,
                        reason,
                    })
                }
            }
        }
        Ok(())
    }
}

/// Converts one column to a typed value according to `type_oid`. The error is a reason text.
pub fn typed_value(data: &ColumnData, type_oid: u32) -> Result<Value, String> {
    match data {
        ColumnData::Null => Ok(Value::Null),
        ColumnData::UnchangedToast => Ok(Value::UnchangedToast),
        ColumnData::Text(b) => from_text(b, b, type_oid),
        ColumnData::Binary(b) => from_binary(b, b, type_oid),
    }
}

/// As [`typed_value`] for a column borrowed from `owner`; text values become zero-copy slices
/// of `owner`.
#[inline]
pub fn typed_value_in(data: ColumnRef<'_>, type_oid: u32, owner: &Bytes) -> Result<Value, String> {
    match data {
        ColumnRef::Null => Ok(Value::Null),
        ColumnRef::UnchangedToast => Ok(Value::UnchangedToast),
        ColumnRef::Text(b) => from_text(b, owner, type_oid),
        ColumnRef::Binary(b) => from_binary(b, owner, type_oid),
    }
}

/// `b` (which lies inside `owner`) as UTF-8 text sharing `owner`'s memory.
#[inline]
fn utf8(b: &[u8], owner: &Bytes) -> Result<PgText, String> {
    match std::str::from_utf8(b) {
        Ok(_) => Ok(PgText(owner.slice_ref(b))),
        Err(e) => Err(format!("text is not valid UTF-8: {e}")),
    }
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned();
    if b.len() > 40 {
        format!("{s:?}…")
    } else {
        format!("{s:?}")
    }
}

#[inline]
fn parse_int(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    if digits.len() <= 18 {
        // Cannot overflow: at most 18 digits.
        let mut v: i64 = 0;
        for &d in digits {
            let d = d.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            v = v * 10 + i64::from(d);
        }
        return Some(if neg { -v } else { v });
    }
    let mut v: i64 = 0;
    for &d in digits {
        let d = d.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(i64::from(d))?
        } else {
            v.checked_add(i64::from(d))?
        };
    }
    Some(v)
}

fn parse_float(b: &[u8]) -> Option<f64> {
    // PostgreSQL prints NaN, Infinity and -Infinity; Rust parses those spellings too.
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn parse_uuid(b: &[u8]) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut hi: Option<u8> = None;
    for (i, &c) in b.iter().enumerate() {
        if c == b'-' {
            if hi.is_some() || i == 0 {
                return None;
            }
            continue;
        }
        let v = (c as char).to_digit(16)? as u8;
        match hi.take() {
            None => hi = Some(v),
            Some(h) => {
                *out.get_mut(n)? = (h << 4) | v;
                n += 1;
            }
        }
    }
    (n == 16 && hi.is_none()).then_some(out)
}

/// Decodes `bytea` text output (hex `\x…`, or the escape format).
fn parse_bytea(b: &[u8]) -> Option<Vec<u8>> {
    if let Some(hex) = b.strip_prefix(b"\\x") {
        if !hex.len().is_multiple_of(2) {
            return None;
        }
        hex.chunks(2)
            .map(|p| Some(((p[0] as char).to_digit(16)? * 16 + (p[1] as char).to_digit(16)?) as u8))
            .collect()
    } else {
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'\\' {
                out.push(b[i]);
                i += 1;
            } else if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else {
                let oct = b.get(i + 1..i + 4)?;
                let mut v: u32 = 0;
                for &d in oct {
                    if !(b'0'..=b'7').contains(&d) {
                        return None;
                    }
                    v = v * 8 + u32::from(d - b'0');
                }
                out.push(u8::try_from(v).ok()?);
                i += 4;
            }
        }
        Some(out)
    }
}

fn from_text(b: &[u8], owner: &Bytes, type_oid: u32) -> Result<Value, String> {
    let bad = |what: &str| format!("{} is not a valid {what}", show(b));
    Ok(match type_oid {
        oid::BOOL => match b {
            b"t" => Value::Bool(true),
            b"f" => Value::Bool(false),
            _ => return Err(bad("bool")),
        },
        oid::INT2 => Value::Int2(
            parse_int(b)
                .and_then(|v| i16::try_from(v).ok())
                .ok_or_else(|| bad("int2"))?,
        ),
        oid::INT4 => Value::Int4(
            parse_int(b)
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(|| bad("int4"))?,
        ),
        oid::INT8 => Value::Int8(parse_int(b).ok_or_else(|| bad("int8"))?),
        oid::FLOAT4 => Value::Float4(
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<f32>().ok())
                .ok_or_else(|| bad("float4"))?,
        ),
        oid::FLOAT8 => Value::Float8(parse_float(b).ok_or_else(|| bad("float8"))?),
        oid::NUMERIC => Value::Numeric(utf8(b, owner)?),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => Value::Text(utf8(b, owner)?),
        oid::UUID => Value::Uuid(parse_uuid(b).ok_or_else(|| bad("uuid"))?),
        oid::JSON => Value::Json(utf8(b, owner)?),
        oid::JSONB => Value::Jsonb(utf8(b, owner)?),
        oid::BYTEA => Value::Bytea(Bytes::from(parse_bytea(b).ok_or_else(|| bad("bytea"))?)),
        oid::DATE => Value::Date(utf8(b, owner)?),
        oid::TIMESTAMP => Value::Timestamp(utf8(b, owner)?),
        oid::TIMESTAMPTZ => Value::TimestampTz(utf8(b, owner)?),
        _ => match oid::array_element(type_oid) {
            Some(elem) => match parse_text_array(b, owner, elem)? {
                Some(items) => Value::Array(items),
                None => Value::Other {
                    type_oid,
                    text: utf8(b, owner)?,
                },
            },
            None => Value::Other {
                type_oid,
                text: utf8(b, owner)?,
            },
        },
    })
}

/// Parses a one-dimensional array literal (`{1,NULL,"a b"}`). `Ok(None)` for shapes kept as
/// text: multi-dimensional arrays and arrays with explicit bounds.
fn parse_text_array(b: &[u8], owner: &Bytes, elem: u32) -> Result<Option<Vec<Value>>, String> {
    let bad = || format!("{} is not a valid array literal", show(b));
    if b.first() == Some(&b'[') {
        return Ok(None);
    }
    if b.first() != Some(&b'{') || b.last() != Some(&b'}') || b.len() < 2 {
        return Err(bad());
    }
    let inner = &b[1..b.len() - 1];
    if inner.first() == Some(&b'{') {
        return Ok(None);
    }
    let mut items = Vec::new();
    if inner.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(Some(items));
    }
    let s = inner;
    let mut i = 0;
    loop {
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut quoted = false;
        let mut owned: Vec<u8> = Vec::new();
        let mut escaped_any = false;
        let start = i;
        let mut end = i;
        if s.get(i) == Some(&b'"') {
            quoted = true;
            i += 1;
            loop {
                match s.get(i) {
                    None => return Err(bad()),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        owned.push(*s.get(i + 1).ok_or_else(bad)?);
                        escaped_any = true;
                        i += 2;
                    }
                    Some(&c) => {
                        owned.push(c);
                        i += 1;
                    }
                }
            }
            while i < s.len() && s[i].is_ascii_whitespace() {
                i += 1;
            }
        } else {
            while i < s.len() && s[i] != b',' {
                if s[i] == b'\\' {
                    escaped_any = true;
                    owned.push(*s.get(i + 1).ok_or_else(bad)?);
                    i += 2;
                } else {
                    owned.push(s[i]);
                    i += 1;
                }
            }
            end = i.min(s.len());
            while end > start && s[end - 1].is_ascii_whitespace() {
                end -= 1;
            }
            if escaped_any {
                // PostgreSQL quotes elements with significant whitespace; trailing blanks here
                // are layout.
                while owned.last().is_some_and(|c| c.is_ascii_whitespace()) {
                    owned.pop();
                }
            }
        }
        let item = if !quoted && !escaped_any && s[start..end].eq_ignore_ascii_case(b"NULL") {
            Value::Null
        } else {
            if !quoted && !escaped_any && start == end {
                return Err(bad());
            }
            if quoted || escaped_any {
                let owned = Bytes::from(owned);
                from_text(&owned, &owned, elem)?
            } else {
                from_text(&inner[start..end], owner, elem)?
            }
        };
        items.push(item);
        match s.get(i) {
            None => break,
            Some(b',') => i += 1,
            Some(_) => return Err(bad()),
        }
    }
    Ok(Some(items))
}

fn fixed<const N: usize>(b: &[u8], what: &str) -> Result<[u8; N], String> {
    b.try_into()
        .map_err(|_| format!("binary {what} must be {N} bytes, got {}", b.len()))
}

fn from_binary(b: &[u8], owner: &Bytes, type_oid: u32) -> Result<Value, String> {
    Ok(match type_oid {
        oid::BOOL => Value::Bool(fixed::<1>(b, "bool")?[0] != 0),
        oid::INT2 => Value::Int2(i16::from_be_bytes(fixed(b, "int2")?)),
        oid::INT4 => Value::Int4(i32::from_be_bytes(fixed(b, "int4")?)),
        oid::INT8 => Value::Int8(i64::from_be_bytes(fixed(b, "int8")?)),
        oid::FLOAT4 => Value::Float4(f32::from_be_bytes(fixed(b, "float4")?)),
        oid::FLOAT8 => Value::Float8(f64::from_be_bytes(fixed(b, "float8")?)),
        oid::NUMERIC => Value::Numeric(PgText::from(numeric_binary_to_text(b)?)),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => Value::Text(utf8(b, owner)?),
        oid::UUID => Value::Uuid(fixed(b, "uuid")?),
        oid::JSON => Value::Json(utf8(b, owner)?),
        oid::JSONB => match b.first() {
            Some(1) => Value::Jsonb(utf8(&b[1..], owner)?),
            other => return Err(format!("unsupported binary jsonb version {other:?}")),
        },
        oid::BYTEA => Value::Bytea(owner.slice_ref(b)),
        oid::DATE => Value::Date(PgText::from(format_date(i32::from_be_bytes(fixed(b, "date")?)))),
        oid::TIMESTAMP => Value::Timestamp(PgText::from(format_timestamp(
            i64::from_be_bytes(fixed(b, "timestamp")?),
            false,
        ))),
        oid::TIMESTAMPTZ => Value::TimestampTz(PgText::from(format_timestamp(
            i64::from_be_bytes(fixed(b, "timestamptz")?),
            true,
        ))),
        _ => match oid::array_element(type_oid) {
            Some(elem) => match parse_binary_array(b, owner, elem)? {
                Some(items) => Value::Array(items),
                None => Value::OtherBinary {
                    type_oid,
                    data: owner.slice_ref(b),
                },
            },
            None => Value::OtherBinary {
                type_oid,
                data: owner.slice_ref(b),
            },
        },
    })
}

fn parse_binary_array(b: &[u8], owner: &Bytes, elem: u32) -> Result<Option<Vec<Value>>, String> {
    let bad = |why: &str| format!("invalid binary array: {why}");
    let rd = |at: usize| -> Result<i32, String> {
        b.get(at..at + 4)
            .map(|s| i32::from_be_bytes(s.try_into().unwrap_or_default()))
            .ok_or_else(|| bad("truncated"))
    };
    let ndim = rd(0)?;
    let elem_oid = rd(8)? as u32;
    if ndim == 0 {
        return Ok(Some(Vec::new()));
    }
    if ndim != 1 {
        return Ok(None);
    }
    if elem_oid != elem {
        return Err(bad(&format!("element type {elem_oid}, expected {elem}")));
    }
    let n = rd(12)?;
    if n < 0 || n as usize > b.len() / 4 {
        return Err(bad("element count does not fit"));
    }
    let mut at = 20;
    let mut items = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = rd(at)?;
        at += 4;
        if len == -1 {
            items.push(Value::Null);
            continue;
        }
        if len < 0 || at + len as usize > b.len() {
            return Err(bad("element length does not fit"));
        }
        items.push(from_binary(&b[at..at + len as usize], owner, elem)?);
        at += len as usize;
    }
    if at != b.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(Some(items))
}

/// Renders PostgreSQL's binary `numeric` (base-10000 digits) as its exact text form.
pub fn numeric_binary_to_text(b: &[u8]) -> Result<String, String> {
    let bad = |why: &str| format!("invalid binary numeric: {why}");
    if b.len() < 8 {
        return Err(bad("shorter than its 8-byte header"));
    }
    let h = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let ndigits = h(0) as usize;
    let weight = h(2) as i16 as i32;
    let sign = h(4);
    let dscale = h(6) as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return Err(bad("unknown sign")),
    }
    if b.len() != 8 + ndigits * 2 || dscale > 0x3FFF {
        return Err(bad("length does not match digit count"));
    }
    let digits: Vec<u16> = (0..ndigits).map(|i| h(8 + 2 * i)).collect();
    if digits.iter().any(|&d| d >= 10_000) {
        return Err(bad("digit out of range"));
    }
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    // Integer part: base-10000 groups at positions 0..=weight.
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            let d = digits.get(i as usize).copied().unwrap_or(0);
            if i == 0 {
                s.push_str(&d.to_string());
            } else {
                s.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while frac.len() < dscale {
            let d = if i >= 0 {
                digits.get(i as usize).copied().unwrap_or(0)
            } else {
                0
            };
            frac.push_str(&format!("{d:04}"));
            i += 1;
        }
        frac.truncate(dscale);
        s.push_str(&frac);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &'static str, oid: u32) -> Value {
        let b = Bytes::from_static(s.as_bytes());
        from_text(&b, &b, oid).unwrap()
    }

    #[test]
    fn scalars_from_text() {
        assert_eq!(t("-32768", oid::INT2), Value::Int2(-32768));
        assert!(typed_value(&ColumnData::Text(Bytes::from_static(b"32768")), oid::INT2).is_err());
        assert_eq!(t("-9223372036854775808", oid::INT8), Value::Int8(i64::MIN));
        assert_eq!(t("t", oid::BOOL), Value::Bool(true));
        assert_eq!(t("1.5", oid::FLOAT8), Value::Float8(1.5));
        assert!(matches!(t("NaN", oid::FLOAT8), Value::Float8(f) if f.is_nan()));
        assert_eq!(t("-Infinity", oid::FLOAT4), Value::Float4(f32::NEG_INFINITY));
        assert_eq!(t("\\x00ff", oid::BYTEA), Value::Bytea(Bytes::from_static(&[0, 255])));
        assert_eq!(
            t("a\\\\b\\001", oid::BYTEA),
            Value::Bytea(Bytes::from_static(b"a\\b\x01"))
        );
        let u = t("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", oid::UUID);
        let Value::Uuid(b) = u else { panic!() };
        assert_eq!(Value::format_uuid(&b), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert!(matches!(t("(1,2)", 600), Value::Other { type_oid: 600, .. }));
    }

    #[test]
    fn arrays_from_text() {
        assert_eq!(
            t("{1,NULL,3}", oid::INT4_ARRAY),
            Value::Array(vec![Value::Int4(1), Value::Null, Value::Int4(3)])
        );
        assert_eq!(
            t(r#"{"a b","NULL",c\,d, e ,""}"#, oid::TEXT_ARRAY),
            Value::Array(vec![
                Value::Text("a b".into()),
                Value::Text("NULL".into()),
                Value::Text("c,d".into()),
                Value::Text("e".into()),
                Value::Text("".into()),
            ])
        );
        assert_eq!(t("{}", oid::INT8_ARRAY), Value::Array(vec![]));
        assert!(matches!(t("{{1,2},{3,4}}", oid::INT4_ARRAY), Value::Other { .. }));
        assert!(matches!(t("[0:1]={1,2}", oid::INT4_ARRAY), Value::Other { .. }));
        assert_eq!(
            t(r#"{"\\x01"}"#, oid::BYTEA_ARRAY),
            Value::Array(vec![Value::Bytea(Bytes::from_static(&[1]))])
        );
        assert!(typed_value(&ColumnData::Text(Bytes::from_static(b"{1,2")), oid::INT4_ARRAY).is_err());
    }

    #[test]
    fn numeric_binary() {
        // 12345.678: weight 1, digits [1, 2345, 6780], dscale 3
        let mut b = vec![0, 3, 0, 1, 0, 0, 0, 3];
        for d in [1u16, 2345, 6780] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        assert_eq!(numeric_binary_to_text(&b).unwrap(), "12345.678");
        // -0.0012: weight -1, digits [12], dscale 4
        let b = [0, 1, 0xff, 0xff, 0x40, 0, 0, 4, 0, 12];
        assert_eq!(numeric_binary_to_text(&b).unwrap(), "-0.0012");
        // 0 with dscale 2
        assert_eq!(numeric_binary_to_text(&[0, 0, 0, 0, 0, 0, 0, 2]).unwrap(), "0.00");
        // 20000 : weight 1, digits [2]
        assert_eq!(
            numeric_binary_to_text(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 2]).unwrap(),
            "20000"
        );
    }
}

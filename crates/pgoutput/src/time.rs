//! PostgreSQL time values: microseconds and days since 2000-01-01, rendered as text without
//! a clock or a time-zone database.

use std::fmt::Write;

/// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
const DAYS_1970_TO_2000: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A timestamp as the replication protocol sends it: microseconds since 2000-01-01 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_UNIX_MICROS)
    }

    /// From microseconds since the Unix epoch.
    pub fn from_unix_micros(us: i64) -> Self {
        PgTimestamp(us.saturating_sub(PG_EPOCH_UNIX_MICROS))
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-23T12:00:00.123456Z`.
    /// PostgreSQL's `infinity` / `-infinity` come out as those words.
    pub fn to_rfc3339(self) -> String {
        if self.0 == i64::MAX {
            return "infinity".into();
        }
        if self.0 == i64::MIN {
            return "-infinity".into();
        }
        let (days, micros) = (self.0.div_euclid(MICROS_PER_DAY), self.0.rem_euclid(MICROS_PER_DAY));
        let (y, m, d) = civil_from_days(days + DAYS_1970_TO_2000);
        let secs = micros / 1_000_000;
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            micros % 1_000_000
        )
    }
}

/// (year, month, day) of a day count since 1970-01-01 in the proleptic Gregorian calendar.
/// Year 0 is 1 BC.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn push_date(out: &mut String, days_since_2000: i64) -> bool {
    let (y, m, d) = civil_from_days(days_since_2000 + DAYS_1970_TO_2000);
    let bc = y <= 0;
    let year = if bc { 1 - y } else { y };
    let _ = write!(out, "{year:04}-{m:02}-{d:02}");
    bc
}

/// A binary `date` (days since 2000-01-01) in PostgreSQL's ISO text form.
pub fn format_date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        _ => {
            let mut s = String::with_capacity(13);
            if push_date(&mut s, i64::from(days)) {
                s.push_str(" BC");
            }
            s
        }
    }
}

/// A binary `timestamp` / `timestamptz` in PostgreSQL's ISO text form; `with_zone` appends
/// `+00` (binary values are UTC).
pub fn format_timestamp(micros: i64, with_zone: bool) -> String {
    match micros {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let (days, rem) = (micros.div_euclid(MICROS_PER_DAY), micros.rem_euclid(MICROS_PER_DAY));
    let mut s = String::with_capacity(32);
    let bc = push_date(&mut s, days);
    let secs = rem / 1_000_000;
    let frac = rem % 1_000_000;
    let _ = write!(s, " {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    if with_zone {
        s.push_str("+00");
    }
    if bc {
        s.push_str(" BC");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(PgTimestamp(0).to_rfc3339(), "2000-01-01T00:00:00.000000Z");
        assert_eq!(PgTimestamp(-1).to_rfc3339(), "1999-12-31T23:59:59.999999Z");
        // 2024-02-29 12:34:56.5 UTC
        let unix = 1_709_210_096_500_000;
        assert_eq!(
            PgTimestamp::from_unix_micros(unix).to_rfc3339(),
            "2024-02-29T12:34:56.500000Z"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(format_date(0), "2000-01-01");
        assert_eq!(format_date(-730_119 - 1), "0001-12-31 BC");
        assert_eq!(format_date(i32::MAX), "infinity");
        assert_eq!(format_timestamp(1_500_000, true), "2000-01-01 00:00:01.5+00");
        assert_eq!(format_timestamp(-86_400_000_000, false), "1999-12-31 00:00:00");
    }
}

//! The commit timestamp (`ts`), always written in UTC with microseconds:
//! `2026-11-22T05:00:00.123456+00:00`, independent of the session's TimeZone.

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_OFFSET_DAYS: i64 = 10_957;
const USECS_PER_DAY: i64 = 86_400_000_000;

/// Appends a PostgreSQL `TimestampTz` (microseconds since 2000-01-01 UTC) as a
/// quoted ISO 8601 string in UTC.
pub fn write_commit_ts(out: &mut Vec<u8>, pg_usecs: i64) {
    let days = pg_usecs.div_euclid(USECS_PER_DAY);
    let mut rem = pg_usecs.rem_euclid(USECS_PER_DAY);
    let (y, m, d) = civil_from_days(days + PG_EPOCH_OFFSET_DAYS);
    let usec = rem % 1_000_000;
    rem /= 1_000_000;
    let (hh, mm, ss) = (rem / 3600, (rem / 60) % 60, rem % 60);
    out.push(b'"');
    if (0..=9999).contains(&y) {
        push_digits(out, y as u64, 4);
    } else {
        // Out of the ISO range: still valid JSON, never produced by real commits.
        out.extend_from_slice(y.to_string().as_bytes());
    }
    out.push(b'-');
    push_digits(out, m as u64, 2);
    out.push(b'-');
    push_digits(out, d as u64, 2);
    out.push(b'T');
    push_digits(out, hh as u64, 2);
    out.push(b':');
    push_digits(out, mm as u64, 2);
    out.push(b':');
    push_digits(out, ss as u64, 2);
    out.push(b'.');
    push_digits(out, usec as u64, 6);
    out.extend_from_slice(b"+00:00\"");
}

fn push_digits(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while v > 0 && i > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = (buf.len() - width).min(i);
    out.extend_from_slice(&buf[start..]);
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(v: i64) -> String {
        let mut out = Vec::new();
        write_commit_ts(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats_pg_epoch_and_known_instants() {
        assert_eq!(ts(0), r#""2000-01-01T00:00:00.000000+00:00""#);
        assert_eq!(ts(-1), r#""1999-12-31T23:59:59.999999+00:00""#);
        // 2026-11-22 05:00:00.123456 UTC = unix 1795323600.123456
        let unix_usecs: i64 = 1_795_323_600_123_456;
        let pg = unix_usecs - PG_EPOCH_OFFSET_DAYS * USECS_PER_DAY;
        assert_eq!(ts(pg), r#""2026-11-22T05:00:00.123456+00:00""#);
        // leap day
        let unix_leap: i64 = 951_782_400_000_000; // 2000-02-29T00:00:00Z
        assert_eq!(
            ts(unix_leap - PG_EPOCH_OFFSET_DAYS * USECS_PER_DAY),
            r#""2000-02-29T00:00:00.000000+00:00""#
        );
    }
}

//! Times as auditors type and read them: RFC 3339 (or epoch milliseconds) in,
//! RFC 3339 UTC with milliseconds out. Proleptic Gregorian calendar, no
//! leap-second table (a `:60` second counts as the next second), no time
//! zone database (offsets are written in the text, as RFC 3339 requires).

use warrant_schema::TimestampMillis;

const MILLIS_PER_DAY: i64 = 86_400_000;

/// Parse `--from-time`/`--to-time`: epoch milliseconds (`1795000000000`),
/// an RFC 3339 date-time (`2026-11-18T13:46:40Z`, `2026-11-18 14:46:40.5+01:00`)
/// or a bare date (`2026-11-18`, midnight UTC).
pub fn parse_time(text: &str) -> Result<TimestampMillis, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map_err(|_| format!("{text:?}: epoch milliseconds out of range"));
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!(
            "{text:?} is neither epoch milliseconds nor an RFC 3339 time \
             (e.g. 2026-11-18T13:46:40Z, 2026-11-18T14:46:40.250+01:00, 2026-11-18)"
        )
    })
}

fn parse_rfc3339(text: &str) -> Option<TimestampMillis> {
    let bytes = text.as_bytes();
    let year = digits(bytes, 0, 4)?;
    expect(bytes, 4, b'-')?;
    let month = digits(bytes, 5, 2)?;
    expect(bytes, 7, b'-')?;
    let day = digits(bytes, 8, 2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let date_millis = days_from_civil(year, month, day).checked_mul(MILLIS_PER_DAY)?;
    if bytes.len() == 10 {
        return Some(date_millis);
    }
    if !matches!(bytes.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = digits(bytes, 11, 2)?;
    expect(bytes, 13, b':')?;
    let minute = digits(bytes, 14, 2)?;
    expect(bytes, 16, b':')?;
    let second = digits(bytes, 17, 2)?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if bytes.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(bytes[at] - b'0');
            }
            at += 1;
        }
        let fraction_digits = at - start;
        if fraction_digits == 0 {
            return None;
        }
        for _ in fraction_digits..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match bytes.get(at)? {
        b'Z' | b'z' if bytes.len() == at + 1 => 0,
        sign @ (b'+' | b'-') if bytes.len() == at + 6 => {
            let hours = digits(bytes, at + 1, 2)?;
            expect(bytes, at + 3, b':')?;
            let minutes = digits(bytes, at + 4, 2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = hours * 60 + minutes;
            if *sign == b'-' {
                -total
            } else {
                total
            }
        }
        _ => return None,
    };
    let seconds_of_day = hour * 3600 + minute * 60 + second - offset_minutes * 60;
    date_millis
        .checked_add(seconds_of_day * 1000)?
        .checked_add(millis)
}

fn digits(bytes: &[u8], at: usize, len: usize) -> Option<i64> {
    let slice = bytes.get(at..at + len)?;
    slice.iter().try_fold(0i64, |value, b| {
        b.is_ascii_digit().then(|| value * 10 + i64::from(b - b'0'))
    })
}

fn expect(bytes: &[u8], at: usize, want: u8) -> Option<()> {
    (bytes.get(at) == Some(&want)).then_some(())
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2026-11-18T13:46:40.000Z`: how every time in the text report is shown.
pub fn format_millis(at: TimestampMillis) -> String {
    let days = at.div_euclid(MILLIS_PER_DAY);
    let of_day = at.rem_euclid(MILLIS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (of_day / 3_600_000, of_day / 60_000 % 60);
    let (second, millis) = (of_day / 1000 % 60, of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_millis_and_rfc3339_name_the_same_instant() {
        // date -u -d @1795000000 → Wed Nov 18 11:06:40 UTC 2026
        let at = 1_795_000_000_000;
        assert_eq!(parse_time("1795000000000"), Ok(at));
        assert_eq!(parse_time("2026-11-18T11:06:40Z"), Ok(at));
        assert_eq!(parse_time("2026-11-18t11:06:40z"), Ok(at));
        assert_eq!(parse_time("2026-11-18 12:06:40+01:00"), Ok(at));
        assert_eq!(parse_time("2026-11-18T06:36:40-04:30"), Ok(at));
        assert_eq!(parse_time("2026-11-18T11:06:40.25Z"), Ok(at + 250));
        assert_eq!(parse_time("2026-11-18T11:06:40.123456789Z"), Ok(at + 123));
        assert_eq!(
            parse_time("2026-11-18"),
            Ok(at - (11 * 3600 + 6 * 60 + 40) * 1000)
        );
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("1969-12-31T23:59:59.999Z"), Ok(-1));
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "yesterday",
            "2026-11-18T08:26:40",
            "2026-11-18T08:26Z",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-31",
            "2026-11-18T24:00:00Z",
            "2026-11-18T08:26:40.Z",
            "2026-11-18T08:26:40+0100",
            "2026-11-18T08:26:40Z trailing",
            "-5",
            "99999999999999999999999",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn formats_utc_with_milliseconds_and_round_trips() {
        assert_eq!(format_millis(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(-1), "1969-12-31T23:59:59.999Z");
        for at in [
            0,
            -1,
            951_782_400_000,
            1_709_164_800_001,
            4_102_444_800_000,
            -62_135_596_800_000,
        ] {
            assert_eq!(parse_time(&format_millis(at)), Ok(at), "{at}");
        }
    }
}

//! Civil time without a time-zone database: platforms speak fixed offsets
//! (TOP and JD use GMT+8) or UTC ISO-8601.

/// Now, in Unix milliseconds, from the WASI wall clock the host gives.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Broken-down time at a fixed UTC offset.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

fn to_civil(unix_ms: i64, offset_minutes: i32) -> Civil {
    let secs = unix_ms.div_euclid(1000) + offset_minutes as i64 * 60;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: ((rem % 3600) / 60) as u32,
        second: (rem % 60) as u32,
    }
}

/// `yyyy-MM-dd HH:mm:ss` at the given offset (TOP, JD: `+480`). Sub-second parts are dropped.
pub fn format_ymd_hms(unix_ms: i64, offset_minutes: i32) -> String {
    let c = to_civil(unix_ms, offset_minutes);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// `yyyy-MM-ddTHH:mm:ssZ`, UTC.
pub fn format_rfc3339_utc(unix_ms: i64) -> String {
    let c = to_civil(unix_ms, 0);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

fn num<T: std::str::FromStr>(s: &str, what: &str, input: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what} in time `{input}`"))
}

/// Parse `yyyy-MM-dd HH:mm:ss` given at `offset_minutes` into Unix ms.
pub fn parse_ymd_hms(s: &str, offset_minutes: i32) -> Result<i64, String> {
    let (date, time) = s
        .split_once(' ')
        .ok_or_else(|| format!("time `{s}` is not `yyyy-MM-dd HH:mm:ss`"))?;
    civil_to_ms(date, time, s).map(|ms| ms - offset_minutes as i64 * 60_000)
}

fn civil_to_ms(date: &str, time: &str, input: &str) -> Result<i64, String> {
    let mut d = date.split('-');
    let mut t = time.split(':');
    let (Some(y), Some(mo), Some(da), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(format!("bad date in time `{input}`"));
    };
    let (Some(h), Some(mi), Some(se), None) = (t.next(), t.next(), t.next(), t.next()) else {
        return Err(format!("bad clock time in time `{input}`"));
    };
    let (y, mo, da): (i64, u32, u32) = (num(y, "year", input)?, num(mo, "month", input)?, num(da, "day", input)?);
    let (h, mi): (i64, i64) = (num(h, "hour", input)?, num(mi, "minute", input)?);
    let (se, frac_ms) = match se.split_once('.') {
        Some((s, f)) => {
            let f3: String = f.chars().chain(std::iter::repeat('0')).take(3).collect();
            (num::<i64>(s, "second", input)?, num::<i64>(&f3, "fraction", input)?)
        }
        None => (num::<i64>(se, "second", input)?, 0),
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return Err(format!("time `{input}` is out of range"));
    }
    let days = days_from_civil(y, mo, da);
    Ok(((days * 86_400) + h * 3600 + mi * 60 + se) * 1000 + frac_ms)
}

/// Parse RFC 3339 (`2024-01-01T12:00:00Z`, `2024-01-01T20:00:00+08:00`, fractions allowed).
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let (date, rest) = s
        .split_once(['T', 't', ' '])
        .ok_or_else(|| format!("time `{s}` is not RFC 3339"))?;
    let (time, offset_min) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let idx = rest
            .rfind(['+', '-'])
            .ok_or_else(|| format!("time `{s}` has no UTC offset"))?;
        let (t, off) = rest.split_at(idx);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..]
            .split_once(':')
            .ok_or_else(|| format!("bad offset in time `{s}`"))?;
        let oh: i64 = num(oh, "offset", s)?;
        let om: i64 = num(om, "offset", s)?;
        (t, sign * (oh * 60 + om))
    };
    civil_to_ms(date, time, s).map(|ms| ms - offset_min * 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_gmt8() {
        // 2024-01-01 12:00:00 GMT+8 == 2024-01-01T04:00:00Z == 1704081600 s
        let ms = 1_704_081_600_000;
        assert_eq!(format_ymd_hms(ms, 480), "2024-01-01 12:00:00");
        assert_eq!(parse_ymd_hms("2024-01-01 12:00:00", 480), Ok(ms));
        assert_eq!(format_rfc3339_utc(ms), "2024-01-01T04:00:00Z");
        assert_eq!(parse_rfc3339("2024-01-01T04:00:00Z"), Ok(ms));
        assert_eq!(parse_rfc3339("2024-01-01T12:00:00+08:00"), Ok(ms));
        assert_eq!(parse_rfc3339("2023-12-31T23:00:00-05:00"), Ok(ms));
        assert_eq!(parse_rfc3339("2024-01-01T04:00:00.250Z"), Ok(ms + 250));
    }

    #[test]
    fn leap_days_and_negative() {
        let ms = parse_rfc3339("2024-02-29T00:00:00Z").unwrap();
        assert_eq!(format_rfc3339_utc(ms), "2024-02-29T00:00:00Z");
        assert_eq!(format_rfc3339_utc(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_ymd_hms("2024-13-01 00:00:00", 0).is_err());
        assert!(parse_ymd_hms("yesterday", 0).is_err());
        assert!(parse_rfc3339("2024-01-01T00:00:00").is_err());
    }
}

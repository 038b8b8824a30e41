//! Allowed time windows per platform: some marketplaces (or a seller's contract with
//! them) only allow calls at certain hours. Outside every window a call waits for the
//! next one to open.
//!
//! A window is `DAYS HH:MM[:SS]-HH:MM[:SS]` in the platform's `timezone` (an IANA name
//! such as `Asia/Shanghai` or `America/New_York`, daylight saving included, or a fixed UTC
//! offset such as `+08:00`): DAYS is `*`, a day (`Mon`), a range (`Mon-Fri`) or a list
//! (`Mon,Wed,Sat`). An end before the start runs past midnight into the next day.

use chrono::{Datelike, Duration as ChronoDuration, FixedOffset, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct TimeWindow {
    days: [bool; 7],
    start: NaiveTime,
    end: NaiveTime,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day(s: &str) -> Result<usize, String> {
    DAYS.iter().position(|d| d.eq_ignore_ascii_case(s.trim())).ok_or_else(|| format!("`{s}` is not a day (Mon..Sun)"))
}

fn time(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
        .map_err(|_| format!("`{s}` is not a time (HH:MM or HH:MM:SS)"))
}

impl TimeWindow {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let bad = |why: String| format!("time window `{spec}`: {why}; expected e.g. \"Mon-Fri 09:00-21:00\"");
        let (days_spec, times) = spec.trim().split_once(' ').ok_or_else(|| bad("no time range".into()))?;
        let mut days = [false; 7];
        for part in days_spec.split(',') {
            match part.split_once('-') {
                _ if part == "*" => days = [true; 7],
                Some((a, b)) => {
                    let (a, b) = (day(a).map_err(bad)?, day(b).map_err(bad)?);
                    let mut d = a;
                    loop {
                        days[d] = true;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => days[day(part).map_err(bad)?] = true,
            }
        }
        let (a, b) = times.trim().split_once('-').ok_or_else(|| bad("no `-` between start and end".into()))?;
        let (start, end) = (time(a).map_err(bad)?, time(b).map_err(bad)?);
        if start == end {
            return Err(bad("start and end are equal".into()));
        }
        Ok(TimeWindow { days, start, end })
    }
}

/// A platform's time zone: a fixed offset or an IANA zone with its daylight-saving rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Zone {
    Fixed(FixedOffset),
    Named(Tz),
}

impl Zone {
    pub const UTC: Zone = Zone::Named(Tz::UTC);
}

/// Parse `Asia/Shanghai`-style IANA names, offsets such as `+08:00` / `-05:30`, or `UTC`.
pub fn parse_zone(s: &str) -> Result<Zone, String> {
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Ok(Zone::UTC);
    }
    if s.starts_with(['+', '-']) {
        return parse_offset(s).map(Zone::Fixed);
    }
    s.parse::<Tz>().map(Zone::Named).map_err(|_| {
        format!("timezone `{s}` is neither an IANA zone name (e.g. Asia/Shanghai, America/New_York) nor a UTC offset like +08:00")
    })
}

fn parse_offset(s: &str) -> Result<FixedOffset, String> {
    let bad = || format!("timezone `{s}` must be an IANA zone name (e.g. Asia/Shanghai) or a UTC offset like +08:00");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let secs = h.parse::<i32>().map_err(|_| bad())? * 3600 + m.parse::<i32>().map_err(|_| bad())? * 60;
    FixedOffset::east_opt(sign * secs).ok_or_else(bad)
}

/// How long until a call is allowed at `now_ms` (zero when a window is open now).
pub fn wait_until_open(windows: &[TimeWindow], zone: Zone, now_ms: i64) -> Duration {
    if windows.is_empty() {
        return Duration::ZERO;
    }
    match zone {
        Zone::Fixed(tz) => wait_in(windows, tz, now_ms),
        Zone::Named(tz) => wait_in(windows, tz, now_ms),
    }
}

fn wait_in<Z: TimeZone>(windows: &[TimeWindow], tz: Z, now_ms: i64) -> Duration {
    let Some(now) = Utc.timestamp_millis_opt(now_ms).single() else { return Duration::ZERO };
    let local = now.with_timezone(&tz);
    let mut best: Option<ChronoDuration> = None;
    // Yesterday's windows may run past midnight into today.
    for offset in -1..=7i64 {
        let date = local.date_naive() + ChronoDuration::days(offset);
        for w in windows {
            if !w.days[date.weekday().num_days_from_monday() as usize] {
                continue;
            }
            // A local time that occurs twice (clocks going back) counts from its first
            // occurrence; one skipped by clocks going forward an hour later.
            let at = |d: chrono::NaiveDate, t: NaiveTime| {
                let local = d.and_time(t);
                tz.from_local_datetime(&local).earliest().or_else(|| tz.from_local_datetime(&(local + ChronoDuration::hours(1))).earliest())
            };
            let Some(start) = at(date, w.start) else { continue };
            let end_date = if w.end <= w.start { date + ChronoDuration::days(1) } else { date };
            let Some(end) = at(end_date, w.end) else { continue };
            let now = local.clone();
            if start <= now && now < end {
                return Duration::ZERO;
            }
            if start > now {
                let wait = start - now;
                best = Some(best.map_or(wait, |b| b.min(wait)));
            }
        }
    }
    best.and_then(|w| w.to_std().ok()).unwrap_or(Duration::ZERO)
}


#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn parses_and_refuses_specs() {
        let w = TimeWindow::parse("Mon-Fri 09:00-21:00").unwrap();
        assert_eq!(w.days, [true, true, true, true, true, false, false]);
        assert_eq!(TimeWindow::parse("Fri-Mon 22:00-06:00").unwrap().days, [true, false, false, false, true, true, true]);
        assert_eq!(TimeWindow::parse("* 00:00:05-00:00:10").unwrap().days, [true; 7]);
        assert!(TimeWindow::parse("Mon-Fry 09:00-21:00").unwrap_err().contains("`Fry` is not a day"));
        assert!(TimeWindow::parse("Mon 9-21").unwrap_err().contains("is not a time"));
        assert!(TimeWindow::parse("Mon").unwrap_err().contains("no time range"));
        assert_eq!(parse_zone("+08:00").unwrap(), Zone::Fixed(FixedOffset::east_opt(8 * 3600).unwrap()));
        assert_eq!(parse_zone("-05:30").unwrap(), Zone::Fixed(FixedOffset::west_opt(5 * 3600 + 1800).unwrap()));
        assert_eq!(parse_zone("Asia/Shanghai").unwrap(), Zone::Named(Tz::Asia__Shanghai));
        assert_eq!(parse_zone("utc").unwrap(), Zone::UTC);
        assert!(parse_zone("Asia/Shanghia").unwrap_err().contains("neither an IANA zone name"));
        assert!(parse_zone("+8").is_err());
    }

    #[test]
    fn waits_for_the_next_window_in_the_platform_time_zone() {
        let w = [TimeWindow::parse("Mon-Fri 09:00-21:00").unwrap()];
        let gmt8 = parse_zone("+08:00").unwrap();
        // Wednesday 2024-01-03 10:00 in GMT+8 is 02:00 UTC: open.
        assert_eq!(wait_until_open(&w, gmt8, ms("2024-01-03T02:00:00Z")), Duration::ZERO);
        // Wednesday 22:00 GMT+8: wait until Thursday 09:00, 11 h.
        assert_eq!(wait_until_open(&w, gmt8, ms("2024-01-03T14:00:00Z")), Duration::from_secs(11 * 3600));
        // Saturday 12:00 GMT+8: wait until Monday 09:00, 45 h.
        assert_eq!(wait_until_open(&w, gmt8, ms("2024-01-06T04:00:00Z")), Duration::from_secs(45 * 3600));
        // A night window running past midnight is open at 02:00 the next day.
        let night = [TimeWindow::parse("Mon 22:00-06:00").unwrap()];
        assert_eq!(wait_until_open(&night, gmt8, ms("2024-01-01T18:00:00Z")), Duration::ZERO); // Tue 02:00
        assert_eq!(wait_until_open(&[], gmt8, 0), Duration::ZERO);
        // The IANA name gives the same answers for a zone without daylight saving.
        let shanghai = parse_zone("Asia/Shanghai").unwrap();
        assert_eq!(wait_until_open(&w, shanghai, ms("2024-01-06T04:00:00Z")), Duration::from_secs(45 * 3600));
    }

    #[test]
    fn named_zones_follow_daylight_saving() {
        let w = [TimeWindow::parse("* 09:00-17:00").unwrap()];
        let ny = parse_zone("America/New_York").unwrap();
        // 09:00 in New York is 14:00 UTC in January (EST) and 13:00 UTC in July (EDT).
        assert_eq!(wait_until_open(&w, ny, ms("2024-01-10T13:30:00Z")), Duration::from_secs(1800));
        assert_eq!(wait_until_open(&w, ny, ms("2024-01-10T14:00:00Z")), Duration::ZERO);
        assert_eq!(wait_until_open(&w, ny, ms("2024-07-10T13:00:00Z")), Duration::ZERO);
        assert_eq!(wait_until_open(&w, ny, ms("2024-07-10T12:30:00Z")), Duration::from_secs(1800));
        // Across the spring change (2024-03-10): Saturday 18:00 EST to Sunday 09:00 EDT is 14 h, not 15.
        assert_eq!(wait_until_open(&w, ny, ms("2024-03-09T23:00:00Z")), Duration::from_secs(14 * 3600));
        // A window starting inside the skipped hour starts an hour later: 01:30 EST -> 03:30 EDT.
        let gap = [TimeWindow::parse("Sun 02:30-04:00").unwrap()];
        assert_eq!(wait_until_open(&gap, ny, ms("2024-03-10T06:30:00Z")), Duration::from_secs(3600));
    }
}

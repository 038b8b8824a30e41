//! Allowed time windows per platform: some marketplaces (or a seller's contract with
//! them) only allow calls at certain hours. Outside every window a call waits for the
//! next one to open.
//!
//! A window is `DAYS HH:MM[:SS]-HH:MM[:SS]` in the platform's `timezone` (a fixed UTC
//! offset such as `+08:00`): DAYS is `*`, a day (`Mon`), a range (`Mon-Fri`) or a list
//! (`Mon,Wed,Sat`). An end before the start runs past midnight into the next day.

use chrono::{Datelike, Duration as ChronoDuration, FixedOffset, NaiveTime, TimeZone, Utc};
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

/// Parse a fixed offset such as `+08:00`, `-05:00` or `UTC`.
pub fn parse_offset(s: &str) -> Result<FixedOffset, String> {
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Ok(FixedOffset::east_opt(0).expect("zero offset"));
    }
    let bad = || format!("timezone `{s}` must be a UTC offset like +08:00 (or UTC)");
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
pub fn wait_until_open(windows: &[TimeWindow], tz: FixedOffset, now_ms: i64) -> Duration {
    if windows.is_empty() {
        return Duration::ZERO;
    }
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
            let Some(start) = tz.from_local_datetime(&date.and_time(w.start)).single() else { continue };
            let end_date = if w.end <= w.start { date + ChronoDuration::days(1) } else { date };
            let Some(end) = tz.from_local_datetime(&end_date.and_time(w.end)).single() else { continue };
            let now = local;
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
        assert_eq!(parse_offset("+08:00").unwrap().local_minus_utc(), 8 * 3600);
        assert_eq!(parse_offset("-05:30").unwrap().local_minus_utc(), -(5 * 3600 + 1800));
        assert!(parse_offset("Asia/Shanghai").is_err());
    }

    #[test]
    fn waits_for_the_next_window_in_the_platform_time_zone() {
        let w = [TimeWindow::parse("Mon-Fri 09:00-21:00").unwrap()];
        let gmt8 = parse_offset("+08:00").unwrap();
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
    }
}

//! A job at a time of day in a time zone (reconciliation's nightly run; snapshots'), with
//! daylight saving: a time the clocks skip that day runs when they land past it, a time
//! they pass twice runs the first time.

pub use berth_capabilities::windows::{parse_zone, Zone};
use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};

/// Every day at `at` in `zone`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Daily {
    pub at: NaiveTime,
    pub zone: Zone,
}

impl Daily {
    /// `at` as `HH:MM` or `HH:MM:SS`; `timezone` an IANA name, an offset like `+08:00`, or
    /// `UTC` (the default).
    pub fn parse(at: &str, timezone: Option<&str>) -> Result<Daily, String> {
        let at = NaiveTime::parse_from_str(at, "%H:%M:%S")
            .or_else(|_| NaiveTime::parse_from_str(at, "%H:%M"))
            .map_err(|_| format!("time `{at}` is not HH:MM or HH:MM:SS (24-hour clock)"))?;
        let zone = timezone.map(parse_zone).transpose()?.unwrap_or(Zone::UTC);
        Ok(Daily { at, zone })
    }

    /// The first run strictly after `now_ms` (Unix ms).
    pub fn next_after(&self, now_ms: i64) -> i64 {
        let now = DateTime::<Utc>::from_timestamp_millis(now_ms).unwrap_or_default();
        let today = match self.zone {
            Zone::Fixed(o) => now.with_timezone(&o).date_naive(),
            Zone::Named(tz) => now.with_timezone(&tz).date_naive(),
        };
        (0..3)
            .filter_map(|days| today.checked_add_signed(Duration::days(days)))
            .map(|day| self.on(day))
            .find(|t| *t > now_ms)
            .unwrap_or(now_ms + 86_400_000)
    }

    /// The run on `day` (local), Unix ms.
    fn on(&self, day: NaiveDate) -> i64 {
        let local = day.and_time(self.at);
        let pick = |r: LocalResult<i64>, shifted: &dyn Fn() -> i64| match r {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t,
            LocalResult::None => shifted(),
        };
        match self.zone {
            Zone::Fixed(o) => pick(o.from_local_datetime(&local).map(|t| t.timestamp_millis()), &|| 0),
            Zone::Named(tz) => pick(tz.from_local_datetime(&local).map(|t| t.timestamp_millis()), &|| {
                // Skipped by a daylight-saving jump: the first minute that exists after it.
                (1..=180)
                    .find_map(|m| tz.from_local_datetime(&(local + Duration::minutes(m))).earliest())
                    .map_or(0, |t| t.timestamp_millis())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn the_next_run_is_today_or_tomorrow_in_the_zone() {
        let d = Daily::parse("02:00", Some("Asia/Shanghai")).unwrap();
        // 2026-12-04 17:00 UTC is 01:00 in Shanghai: today's 02:00 is an hour away.
        assert_eq!(d.next_after(ms("2026-12-04T17:00:00Z")), ms("2026-12-04T18:00:00Z"));
        // Right at it, or after: tomorrow's.
        assert_eq!(d.next_after(ms("2026-12-04T18:00:00Z")), ms("2026-12-05T18:00:00Z"));
        let utc = Daily::parse("23:59:30", None).unwrap();
        assert_eq!(utc.next_after(ms("2026-12-04T23:59:00Z")), ms("2026-12-04T23:59:30Z"));
        let fixed = Daily::parse("03:15", Some("-05:00")).unwrap();
        assert_eq!(fixed.next_after(ms("2026-12-04T00:00:00Z")), ms("2026-12-04T08:15:00Z"));
    }

    #[test]
    fn daylight_saving_skips_and_repeats_are_handled() {
        // New York springs forward at 02:00 on 2026-03-08: 02:30 does not exist that day.
        let d = Daily::parse("02:30", Some("America/New_York")).unwrap();
        assert_eq!(d.next_after(ms("2026-03-08T05:00:00Z")), ms("2026-03-08T07:00:00Z"));
        // It falls back on 2026-11-01: 01:30 happens twice; the first counts.
        let d = Daily::parse("01:30", Some("America/New_York")).unwrap();
        assert_eq!(d.next_after(ms("2026-11-01T04:00:00Z")), ms("2026-11-01T05:30:00Z"));
    }

    #[test]
    fn bad_times_and_zones_are_named() {
        assert!(Daily::parse("25:00", None).unwrap_err().contains("HH:MM"));
        assert!(Daily::parse("02:00", Some("Mars/Olympus")).unwrap_err().contains("IANA"));
    }
}

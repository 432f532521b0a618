//! Date parsing shared by the raster and photo readers.
//!
//! Every input date becomes microseconds since the Unix epoch (UTC). A date without a zone
//! (YFCC, Flickr `datetaken`, EXIF `DateTimeOriginal`, TIFF tags) is the camera's local time
//! and no zone is known, so it is taken as UTC: expect errors of up to ±14 h on such dates.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Parse a date or date-time into microseconds since the epoch (UTC).
///
/// Accepted: RFC 3339 / ISO 8601 with an offset (`2020-05-18T13:32:10Z`), the same without
/// an offset (`T` or a space between date and time, optional fraction: `2012-02-16 09:56:37.0`),
/// the EXIF/TIFF form `2013:02:06 16:00:03`, a bare date `2020-05-18` (midnight UTC), and
/// Unix seconds (`1360166403`). Returns a message saying what was wrong otherwise.
pub(crate) fn parse_time(raw: &str) -> Result<i64, String> {
    let s = raw.trim().trim_end_matches('\0').trim();
    if s.is_empty() {
        return Err("empty date".into());
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 12 {
        let secs: i64 = s.parse().map_err(|_| format!("bad date '{raw}'"))?;
        return Timestamp::from_second(secs)
            .map(|t| t.as_microsecond())
            .map_err(|e| format!("bad date '{raw}': {e}"));
    }
    let fixed = exif_to_iso(s);
    let s = fixed.as_deref().unwrap_or(s);
    if let Ok(ts) = s.parse::<Timestamp>() {
        return Ok(ts.as_microsecond());
    }
    if let Ok(dt) = s.parse::<DateTime>() {
        return civil_to_micros(dt, raw);
    }
    if let Ok(d) = s.parse::<Date>() {
        return civil_to_micros(d.to_datetime(jiff::civil::Time::midnight()), raw);
    }
    Err(format!("bad date '{raw}' (expected e.g. 2012-02-16 09:56:37 or 2020-05-18T13:32:10Z)"))
}

/// `YYYY:MM:DD HH:MM:SS…` (EXIF, TIFFTAG_DATETIME) → `YYYY-MM-DD HH:MM:SS…`.
fn exif_to_iso(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let looks_exif = b.len() >= 10
        && b.get(4) == Some(&b':')
        && b.get(7) == Some(&b':')
        && b.iter().take(4).all(u8::is_ascii_digit);
    if !looks_exif {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        out.push(if (i == 4 || i == 7) && c == ':' { '-' } else { c });
    }
    Some(out)
}

fn civil_to_micros(dt: DateTime, raw: &str) -> Result<i64, String> {
    dt.to_zoned(TimeZone::UTC)
        .map(|z| z.timestamp().as_microsecond())
        .map_err(|e| format!("bad date '{raw}': {e}"))
}

/// The first plausible calendar date written as 8 digits `YYYYMMDD` (years 1900–2099) in a
/// file name, bounded by non-digits, as midnight UTC. Landsat product ids and many
/// `name_20160101.tif` series carry their acquisition date this way.
pub(crate) fn date_in_name(name: &str) -> Option<i64> {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
            continue;
        }
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i - start == 8 {
            let run = name.get(start..i)?;
            let y: i16 = run.get(0..4)?.parse().ok()?;
            let m: i8 = run.get(4..6)?.parse().ok()?;
            let d: i8 = run.get(6..8)?.parse().ok()?;
            if (1900..2100).contains(&y) {
                if let Ok(date) = Date::new(y, m, d) {
                    if let Ok(t) = civil_to_micros(date.to_datetime(jiff::civil::Time::midnight()), run) {
                        return Some(t);
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_bring() {
        let want = 1_329_386_197_000_000; // 2012-02-16T09:56:37Z
        assert_eq!(parse_time("2012-02-16 09:56:37.0"), Ok(want));
        assert_eq!(parse_time("2012-02-16 09:56:37"), Ok(want));
        assert_eq!(parse_time("2012-02-16T09:56:37Z"), Ok(want));
        assert_eq!(parse_time("2012-02-16T10:56:37+01:00"), Ok(want));
        assert_eq!(parse_time("2012:02:16 09:56:37"), Ok(want));
        assert_eq!(parse_time("1329386197"), Ok(want));
        assert_eq!(parse_time("2012-02-16"), Ok(want - (9 * 3600 + 56 * 60 + 37) * 1_000_000));
        assert!(parse_time("2012-13-16 09:56:37").is_err());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("").is_err());
    }

    #[test]
    fn finds_dates_in_file_names() {
        let d = date_in_name("LC08_L1TP_224077_20200518_20200518_01_RT_B2.TIF");
        assert_eq!(d, Some(1_589_760_000_000_000));
        assert_eq!(date_in_name("rgbn_20160101.tif"), Some(1_451_606_400_000_000));
        assert_eq!(date_in_name("rgbn.tif"), None);
        assert_eq!(date_in_name("scene_20161399.tif"), None);
        assert_eq!(date_in_name("x_123456789.tif"), None);
    }
}

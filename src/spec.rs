//! A query described in plain values, as `graftdb query`'s flags and `graftdb serve`'s JSON
//! give it, turned into a checked [`Filter`], a query vector and [`SearchResult`].
//!
//! Both front ends call these functions, so they accept and refuse the same input. Errors
//! are [`Error::InvalidInput`] naming the CLI flag (`--bbox`, `--radius-km`); the HTTP API
//! reports the same name as its JSON field (`bbox`, `radius_km`), see [`field_name`].

use std::path::Path;

use crate::embed::{Bundle, Device, EncoderOptions, SessionOptions, TextEncoder};
use crate::{Db, Error, Filter, Kind, Level, Query, Record, RecordId, Region, Result, SearchResult, SpaceDef};

/// Region, time and kind filters in plain values; [`FilterSpec::build`] checks them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterSpec {
    /// `[west, south, east, north]`, degrees; west > east crosses the antimeridian.
    pub bbox: Option<[f64; 4]>,
    /// `[lat, lon]` centre of a great-circle radius (needs `radius_km`).
    pub near: Option<[f64; 2]>,
    /// Radius around `near`, km.
    pub radius_km: Option<f64>,
    /// Polygon text (WKT or GeoJSON) and the name of where it came from (flag or file).
    pub polygon: Option<(String, String)>,
    /// Geohash prefix.
    pub geohash: Option<String>,
    /// Earliest time (RFC 3339 or a date), inclusive.
    pub from: Option<String>,
    /// Latest time (RFC 3339, or a date meaning the whole day), inclusive.
    pub to: Option<String>,
    /// Tiles or photos only.
    pub kind: Option<Kind>,
}

impl FilterSpec {
    /// The checked [`Filter`]: every region given, combined with AND.
    pub fn build(&self) -> Result<Filter> {
        let mut f = Filter { kind: self.kind, ..Default::default() };
        if let Some([w, s, e, n]) = self.bbox {
            f.regions.push(Region::bbox(w, s, e, n)?);
        }
        match (self.near, self.radius_km) {
            (Some([lat, lon]), Some(r)) => f.regions.push(Region::circle(lon, lat, r)?),
            (Some(_), None) => return Err(Error::invalid("--near", "needs --radius-km")),
            (None, Some(_)) => return Err(Error::invalid("--radius-km", "needs --near LAT,LON")),
            (None, None) => {}
        }
        if let Some((at, text)) = &self.polygon {
            f.regions.push(Region::parse_polygon(at, text)?);
        }
        if let Some(g) = &self.geohash {
            f.regions.push(Region::geohash(g)?);
        }
        f.from = self.from.as_deref().map(|t| parse_time("--from", t, false)).transpose()?;
        f.to = self.to.as_deref().map(|t| parse_time("--to", t, true)).transpose()?;
        if let (Some(a), Some(b)) = (f.from, f.to) {
            if a > b {
                return Err(Error::invalid("--from", "is after --to"));
            }
        }
        Ok(f)
    }
}

/// Parse an RFC 3339 timestamp or a date into microseconds since the epoch. A date as an
/// upper bound means the end of that day, so both bounds include whole days.
pub fn parse_time(flag: &str, s: &str, end_of_day: bool) -> Result<i64> {
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Ok(ts.as_microsecond());
    }
    match s.parse::<jiff::civil::Date>() {
        Ok(d) => {
            let start = d.to_zoned(jiff::tz::TimeZone::UTC).map_err(|e| Error::invalid(flag, format!("'{s}': {e}")))?.timestamp().as_microsecond();
            Ok(if end_of_day { start + 86_400_000_000 - 1 } else { start })
        }
        Err(_) => Err(Error::invalid(flag, format!("'{s}': not an RFC 3339 timestamp (2021-06-01T00:00:00Z) or a date (2021-06-01)"))),
    }
}

/// Refuse a query whose level (`patch` or not) disagrees with the space's.
pub fn check_level(def: &SpaceDef, patch: bool) -> Result<()> {
    match (patch, def.level) {
        (true, Level::Image) => Err(Error::invalid("--level", format!("patch: space '{}' is image-level; use a patch-level space", def.name))),
        (false, Level::Patch { .. }) => Err(Error::invalid("--level", format!("image: space '{}' is patch-level; ask for level patch", def.name))),
        _ => Ok(()),
    }
}

/// A record by the id a user typed: digits try an integer id first, then a string id.
pub fn find_record(db: &Db, id: &str) -> Result<(u64, Record)> {
    find_record_of(db, None, id)?.ok_or_else(|| Error::invalid("--like", format!("{id}: no tile or photo has this id")))
}

/// [`find_record`] narrowed to one kind; `None` when no record has the id.
pub fn find_record_of(db: &Db, kind: Option<Kind>, id: &str) -> Result<Option<(u64, Record)>> {
    if let Ok(i) = id.parse::<i64>() {
        if let Some(found) = db.get(kind, &RecordId::Int(i))? {
            return Ok(Some(found));
        }
    }
    db.get(kind, &RecordId::Str(id.to_string()))
}

/// The stored vector of the record `id` in an image-level space, and its key (to leave out).
pub fn like_vector(db: &Db, def: &SpaceDef, id: &str) -> Result<(Vec<f32>, u64)> {
    if !matches!(def.level, Level::Image) {
        return Err(Error::invalid(
            "--like",
            format!("space '{}' is patch-level; use --like with the image-level space (records have no single vector here)", def.name),
        ));
    }
    let (key, rec) = find_record(db, id)?;
    let v = db.vector(&def.name, key)?.ok_or_else(|| {
        Error::invalid("--like", format!("{id}: {} '{}' has no vector in space '{}'; run graftdb embed first", rec.kind().as_str(), rec.id(), def.name))
    })?;
    Ok((v, key))
}

/// Open a bundle's text encoder on CPU (one query is milliseconds), checking that it makes
/// vectors of the space's dimension.
pub fn text_encoder(model: &Path, def: &SpaceDef) -> Result<TextEncoder> {
    let bundle = Bundle::open(model)?;
    let m = bundle.manifest();
    if m.dim != def.dim as usize {
        return Err(Error::invalid(
            "--model",
            format!(
                "{}: bundle '{}' makes {}-d vectors but space '{}' holds {}-d vectors; use the bundle that filled the space",
                bundle.dir().display(),
                m.name,
                m.dim,
                def.name,
                def.dim
            ),
        ));
    }
    open_text_encoder(&bundle)
}

/// A bundle's text encoder on CPU, one ONNX Runtime run per 32 texts.
pub fn open_text_encoder(bundle: &Bundle) -> Result<TextEncoder> {
    let opts = EncoderOptions {
        session: SessionOptions { device: Device::Cpu, threads: None, ..SessionOptions::default() },
        batch_size: 32,
        normalize: true,
        patches: false,
        ..EncoderOptions::default()
    };
    TextEncoder::open(bundle, &opts)
}

/// Run `q`, leaving out the record `leave_out` (a `--like` query's own record) while still
/// returning up to `q.k` hits.
pub fn search_leaving_out(db: &Db, mut q: Query, leave_out: Option<u64>) -> Result<SearchResult> {
    let k = q.k;
    q.k += usize::from(leave_out.is_some());
    let mut res = db.search(&q)?;
    if let Some(key) = leave_out {
        res.hits.retain(|h| h.key != key);
        res.hits.truncate(k);
    }
    Ok(res)
}

/// The HTTP API's name for a CLI flag: `--radius-km` → `radius_km`. Other names (a file,
/// a row) are returned as they are.
pub fn field_name(at: &str) -> String {
    match at.strip_prefix("--") {
        Some(flag) => flag.replace('-', "_"),
        None => at.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_errors_name_the_flag() {
        let err = |f: FilterSpec| match f.build() {
            Err(Error::InvalidInput { at, .. }) => at,
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        assert_eq!(err(FilterSpec { bbox: Some([f64::NAN, 0.0, 1.0, 1.0]), ..Default::default() }), "--bbox");
        assert_eq!(err(FilterSpec { near: Some([0.0, 0.0]), ..Default::default() }), "--near");
        assert_eq!(err(FilterSpec { radius_km: Some(1.0), ..Default::default() }), "--radius-km");
        assert_eq!(err(FilterSpec { from: Some("2021-02-01".into()), to: Some("2021-01-01".into()), ..Default::default() }), "--from");
        assert_eq!(err(FilterSpec { to: Some("yesterday".into()), ..Default::default() }), "--to");
        assert_eq!(err(FilterSpec { geohash: Some("u0a".into()), ..Default::default() }), "--geohash");
        let f = FilterSpec { bbox: Some([1.0, 2.0, 3.0, 4.0]), from: Some("2021-01-01".into()), to: Some("2021-01-01".into()), ..Default::default() }.build().unwrap();
        assert_eq!(f.regions.len(), 1);
        assert_eq!(f.to.unwrap() - f.from.unwrap(), 86_400_000_000 - 1, "a date as upper bound is the whole day");
    }

    #[test]
    fn field_names() {
        assert_eq!(field_name("--radius-km"), "radius_km");
        assert_eq!(field_name("--bbox"), "bbox");
        assert_eq!(field_name("area.geojson"), "area.geojson");
    }
}

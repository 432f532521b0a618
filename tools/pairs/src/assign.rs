//! The GRAFT tile-centre rule as a pure function: photos (lon, lat, time) → tiles.
//!
//! * Photos are binned by 10°×10° cell (`floor(lon/10)`, `floor(lat/10)`) and by the 3-month
//!   quarter of the time taken (`year`, `(month-1)/3`, UTC). Photos with no time form their
//!   own quarter bin, [`Quarter::None`], per cell.
//! * Within a bin, in input order (the builder sorts photos by id first), the first photo not
//!   yet covered becomes a tile centre. Every not-yet-covered photo of the same bin inside that
//!   centre's square is assigned to the tile and marked covered. The square is
//!   `tile_px × gsd` metres on a side, in degrees at the centre latitude:
//!   `half_lat = tile_px*gsd/2 / 111_320`, `half_lon = half_lat / cos(lat)`; the boundary is
//!   inclusive (`|Δlat| <= half_lat && |Δlon| <= half_lon`).
//! * Each photo lands in exactly one tile. A tile keeps at most `max_photos` photos (the first
//!   ones in input order); the rest are still covered by it but dropped ("over the cap").
//! * **Antimeridian.** Longitudes are normalised to `[-180, 180)` first (so `180` is `-180`).
//!   Longitude differences are taken the short way round (`Δlon` in `[-180, 180)`), so a square
//!   that crosses ±180 is tested correctly. Bins do not wrap, though: `floor(lon/10)` puts 179.99°
//!   and -179.99° in different cells (17 and -18), exactly as the GRAFT rule bins them, so a
//!   square centred at 179.99° only takes photos of its own cell. Its bbox may extend past 180°
//!   (reported unwrapped, e.g. `180.004`).
//! * Pixel offsets come from the tile's north-up geotransform (top-left corner
//!   `(lon-half_lon, lat+half_lat)`, pixel size `2*half/tile_px`): `row = floor((top-lat)/px_lat)`,
//!   `col = floor((Δlon+half_lon)/px_lon)`, clamped to `[0, tile_px)` (the inclusive far edge
//!   falls in the last pixel).

use rstar::{primitives::GeomWithData, RTree, AABB};
use std::collections::BTreeMap;

/// Metres per degree of latitude used for the square.
pub const M_PER_DEG: f64 = 111_320.0;

/// A photo as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhotoPt {
    /// Longitude, degrees.
    pub lon: f64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Time taken, microseconds since the Unix epoch (UTC).
    pub time: Option<i64>,
}

/// The quarter part of a bin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quarter {
    /// Photos with no time taken.
    None,
    /// `(year, 0..=3)`.
    Q(i32, u8),
}

/// A bin: 10° cell and quarter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BinKey {
    /// Quarter of the time taken.
    pub quarter: Quarter,
    /// `floor(lon/10)` of the normalised longitude.
    pub cx: i32,
    /// `floor(lat/10)`.
    pub cy: i32,
}

/// Parameters of the rule.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Tile side in pixels.
    pub tile_px: u32,
    /// Ground sample distance, metres per pixel.
    pub gsd_m: f64,
    /// Most photos kept per tile.
    pub max_photos: usize,
}

/// One tile chosen by the rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TileAssign {
    /// Its bin.
    pub bin: BinKey,
    /// Input index of the centre photo.
    pub centre: usize,
    /// Centre longitude (normalised), degrees.
    pub lon: f64,
    /// Centre latitude, degrees.
    pub lat: f64,
    /// Half side in degrees `(half_lon, half_lat)`.
    pub half: (f64, f64),
    /// Kept photos in input order: `(input index, [row, col])`.
    pub photos: Vec<(usize, [u32; 2])>,
    /// Input indices of photos covered by this tile but dropped over the cap.
    pub over_cap: Vec<usize>,
}

impl TileAssign {
    /// `[min_lon, min_lat, max_lon, max_lat]`; longitudes may pass ±180 near the antimeridian.
    pub fn bbox(&self) -> [f64; 4] {
        [self.lon - self.half.0, self.lat - self.half.1, self.lon + self.half.0, self.lat + self.half.1]
    }
}

/// Result of [`assign`].
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    /// Tiles in bin order, then creation order.
    pub tiles: Vec<TileAssign>,
    /// Photos dropped over the cap (sum of the tiles' `over_cap`).
    pub over_cap: usize,
    /// Photos without a time (binned in [`Quarter::None`]).
    pub no_time: usize,
    /// Photos with a non-finite or out-of-range coordinate, skipped.
    pub bad_coord: usize,
}

/// Longitude normalised to `[-180, 180)`.
pub fn norm_lon(lon: f64) -> f64 {
    if (-180.0..180.0).contains(&lon) {
        return lon; // exact: most inputs are untouched
    }
    if !lon.is_finite() || lon.abs() > 1e4 {
        let l = (lon + 180.0).rem_euclid(360.0) - 180.0;
        return if l >= 180.0 { -180.0 } else { l };
    }
    let mut l = lon;
    while l >= 180.0 {
        l -= 360.0;
    }
    while l < -180.0 {
        l += 360.0;
    }
    l
}

/// `a - b` in longitude, the short way round, in `[-180, 180)`.
pub fn dlon(a: f64, b: f64) -> f64 {
    norm_lon(a - b)
}

/// Half side `(half_lon, half_lat)` in degrees of a tile centred at latitude `lat`.
pub fn half_extent(lat: f64, tile_px: u32, gsd_m: f64) -> (f64, f64) {
    let half_lat = tile_px as f64 * gsd_m / 2.0 / M_PER_DEG;
    let c = lat.to_radians().cos().abs().max(1e-12);
    (half_lat / c, half_lat)
}

/// Whether `(lon, lat)` is inside the square of half side `half` centred at `(clon, clat)`.
pub fn in_square(clon: f64, clat: f64, half: (f64, f64), lon: f64, lat: f64) -> bool {
    (lat - clat).abs() <= half.1 && dlon(lon, clon).abs() <= half.0
}

/// `[row, col]` of `(lon, lat)` inside the tile (north-up), clamped to `[0, tile_px)`.
pub fn pixel_offset(clon: f64, clat: f64, half: (f64, f64), tile_px: u32, lon: f64, lat: f64) -> [u32; 2] {
    // Fractions of the side from the top / left edge; the centre gives exactly 0.5.
    let fy = (half.1 - (lat - clat)) / (2.0 * half.1);
    let fx = (dlon(lon, clon) + half.0) / (2.0 * half.0);
    let max = (tile_px - 1) as f64;
    let row = (fy * tile_px as f64).floor().clamp(0.0, max);
    let col = (fx * tile_px as f64).floor().clamp(0.0, max);
    [row as u32, col as u32]
}

/// `(year, month 1..=12, day)` of a Unix-epoch day number (proleptic Gregorian, UTC).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Epoch day number of a civil date (inverse of [`civil_from_days`]).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Quarter of a time in microseconds since the epoch.
pub fn quarter_of(time: Option<i64>) -> Quarter {
    match time {
        None => Quarter::None,
        Some(us) => {
            let (y, m, _) = civil_from_days(us.div_euclid(86_400_000_000));
            Quarter::Q(y as i32, ((m - 1) / 3) as u8)
        }
    }
}

/// The bin of a photo (`None` for a non-finite coordinate or |lat| > 90).
pub fn bin_of(p: &PhotoPt) -> Option<BinKey> {
    if !p.lon.is_finite() || !p.lat.is_finite() || p.lat.abs() > 90.0 {
        return None;
    }
    let lon = norm_lon(p.lon);
    Some(BinKey { quarter: quarter_of(p.time), cx: (lon / 10.0).floor() as i32, cy: (p.lat / 10.0).floor() as i32 })
}

type Pt = GeomWithData<[f64; 2], usize>;

/// Apply the GRAFT rule to `photos` (in the order given). See the module docs.
pub fn assign(photos: &[PhotoPt], params: Params) -> Assignment {
    let mut out = Assignment::default();
    let mut bins: BTreeMap<BinKey, Vec<usize>> = BTreeMap::new();
    for (i, p) in photos.iter().enumerate() {
        match bin_of(p) {
            Some(b) => {
                if p.time.is_none() {
                    out.no_time += 1;
                }
                bins.entry(b).or_default().push(i)
            }
            None => out.bad_coord += 1,
        }
    }
    let mut covered = vec![false; photos.len()];
    let mut hits: Vec<usize> = Vec::new();
    for (bin, members) in bins {
        let pts: Vec<Pt> =
            members.iter().map(|&i| GeomWithData::new([norm_lon(photos[i].lon), photos[i].lat], i)).collect();
        let tree = RTree::bulk_load(pts);
        for &c in &members {
            if covered[c] {
                continue;
            }
            let clon = norm_lon(photos[c].lon);
            let clat = photos[c].lat;
            let half = half_extent(clat, params.tile_px, params.gsd_m);
            // Envelope slightly larger than the square; the exact test below decides.
            let eps = 1e-9;
            let hl = (half.0 + eps).min(360.0);
            let hb = half.1 + eps;
            hits.clear();
            let mut query = |lo: f64, hi: f64| {
                let env = AABB::from_corners([lo, clat - hb], [hi, clat + hb]);
                for g in tree.locate_in_envelope_intersecting(&env) {
                    hits.push(g.data);
                }
            };
            query(clon - hl, clon + hl);
            // Parts of the square past ±180, shifted back into [-180, 180).
            if clon - hl < -180.0 {
                query(clon - hl + 360.0, 180.0);
            }
            if clon + hl >= 180.0 {
                query(-180.0, clon + hl - 360.0);
            }
            hits.sort_unstable();
            hits.dedup();
            let mut tile =
                TileAssign { bin, centre: c, lon: clon, lat: clat, half, photos: Vec::new(), over_cap: Vec::new() };
            for &i in hits.iter() {
                if covered[i] {
                    continue;
                }
                let (lon, lat) = (norm_lon(photos[i].lon), photos[i].lat);
                if !in_square(clon, clat, half, lon, lat) {
                    continue;
                }
                covered[i] = true;
                if tile.photos.len() < params.max_photos {
                    tile.photos.push((i, pixel_offset(clon, clat, half, params.tile_px, lon, lat)));
                } else {
                    tile.over_cap.push(i);
                }
            }
            debug_assert!(covered[c]);
            out.over_cap += tile.over_cap.len();
            out.tiles.push(tile);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_roundtrip() {
        for d in [-800_000i64, -1, 0, 1, 18_000, 19_000, 2_000_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn centre_offset_is_middle() {
        let half = half_extent(45.0, 224, 10.0);
        assert_eq!(pixel_offset(7.0, 45.0, half, 224, 7.0, 45.0), [112, 112]);
        assert_eq!(pixel_offset(7.0, 45.0, half, 224, 7.0 - half.0, 45.0 + half.1), [0, 0]);
        assert_eq!(pixel_offset(7.0, 45.0, half, 224, 7.0 + half.0, 45.0 - half.1), [223, 223]);
    }

    #[test]
    fn norm() {
        assert_eq!(norm_lon(180.0), -180.0);
        assert_eq!(norm_lon(-180.0), -180.0);
        assert!((dlon(-179.999, 179.999) - 0.002).abs() < 1e-9);
    }
}

//! [`Region`]: the one type that answers containment, intersection and distance.
//!
//! No other module does point-in-polygon or haversine; they ask a `Region`.

use geo::{Closest, Contains, Distance, Haversine, HaversineClosestPoint, Intersects};
use geo::{Coord, LineString, MultiPolygon, Point, Polygon, Rect};
use std::cell::{Cell, OnceCell};

use super::hash;
use crate::{Error, Kind, Result};

/// Mean Earth radius used for great-circle distances, in km (geo's GRS80 mean radius).
pub const EARTH_RADIUS_KM: f64 = 6_371.008_8;

/// A spatial filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Region {
    /// `[west, south, east, north]`; `west > east` means the box crosses the antimeridian.
    BBox([f64; 4]),
    /// All positions within `km` (great-circle) of a centre.
    Circle {
        /// Centre longitude.
        lon: f64,
        /// Centre latitude.
        lat: f64,
        /// Radius in km.
        km: f64,
    },
    /// A polygon (or several), holes allowed, in WGS84 lon/lat.
    Polygon(MultiPolygon<f64>),
    /// A geohash cell given by its textual prefix.
    Geohash(String),
}

fn check_lon_lat(at: &str, lon: f64, lat: f64) -> Result<()> {
    if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
        return Err(Error::invalid(at, format!("longitude {lon} is outside [-180, 180]")));
    }
    if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
        return Err(Error::invalid(at, format!("latitude {lat} is outside [-90, 90]")));
    }
    Ok(())
}

/// Validate a position; `at` names where it came from.
pub fn validate_point(at: &str, lon: f64, lat: f64) -> Result<()> {
    check_lon_lat(at, lon, lat)
}

impl Region {
    /// A checked bbox.
    pub fn bbox(w: f64, s: f64, e: f64, n: f64) -> Result<Region> {
        check_lon_lat("--bbox", w, s)?;
        check_lon_lat("--bbox", e, n)?;
        if s > n {
            return Err(Error::invalid("--bbox", format!("south {s} is north of north {n}")));
        }
        Ok(Region::BBox([w, s, e, n]))
    }

    /// A checked circle.
    pub fn circle(lon: f64, lat: f64, km: f64) -> Result<Region> {
        check_lon_lat("--near", lon, lat)?;
        if !km.is_finite() || km < 0.0 {
            return Err(Error::invalid("--radius-km", format!("{km} is not a non-negative distance")));
        }
        Ok(Region::Circle { lon, lat, km })
    }

    /// A checked geohash prefix.
    pub fn geohash(prefix: &str) -> Result<Region> {
        hash::decode_prefix(prefix)?;
        Ok(Region::Geohash(prefix.to_ascii_lowercase()))
    }

    /// Parse a polygon from WKT (`POLYGON`/`MULTIPOLYGON`) or GeoJSON text (a Polygon,
    /// MultiPolygon, Feature or FeatureCollection of those). `at` names the source.
    pub fn parse_polygon(at: &str, text: &str) -> Result<Region> {
        let t = text.trim_start();
        let mp: MultiPolygon<f64> = if t.starts_with('{') {
            let gj: geojson::GeoJson = t.parse().map_err(|e| Error::invalid(at, format!("not valid GeoJSON: {e}")))?;
            let coll = geo::GeometryCollection::<f64>::try_from(&gj)
                .map_err(|e| Error::invalid(at, format!("GeoJSON: {e}")))?;
            let mut polys = Vec::new();
            for g in coll {
                match g {
                    geo::Geometry::Polygon(p) => polys.push(p),
                    geo::Geometry::MultiPolygon(mp) => polys.extend(mp.0),
                    other => return Err(Error::invalid(at, format!("expected polygons, found {}", geom_name(&other)))),
                }
            }
            // GeoJSON parsing closes rings silently; RFC 7946 requires closed input, checked below on the raw text.
            check_geojson_rings_closed(at, &gj)?;
            MultiPolygon(polys)
        } else {
            check_wkt_rings_closed(at, t)?;
            let g: geo::Geometry<f64> = wkt::TryFromWkt::try_from_wkt_str(t)
                .map_err(|e| Error::invalid(at, format!("not valid WKT: {e}")))?;
            match g {
                geo::Geometry::Polygon(p) => MultiPolygon(vec![p]),
                geo::Geometry::MultiPolygon(mp) => mp,
                other => return Err(Error::invalid(at, format!("expected POLYGON or MULTIPOLYGON, found {}", geom_name(&other)))),
            }
        };
        if mp.0.is_empty() {
            return Err(Error::invalid(at, "no polygon found"));
        }
        for p in &mp.0 {
            for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
                if ring.0.len() < 4 {
                    return Err(Error::invalid(at, "a polygon ring needs at least 4 positions (3 distinct plus the closing one)"));
                }
                for c in &ring.0 {
                    check_lon_lat(at, c.x, c.y)?;
                }
            }
        }
        Ok(Region::Polygon(mp))
    }

    /// Boxes `[w, s, e, n]` with `w <= e` whose union contains the region.
    pub fn bboxes(&self) -> Vec<[f64; 4]> {
        match self {
            Region::BBox([w, s, e, n]) => {
                if w <= e {
                    vec![[*w, *s, *e, *n]]
                } else {
                    vec![[*w, *s, 180.0, *n], [-180.0, *s, *e, *n]]
                }
            }
            Region::Circle { lon, lat, km } => {
                let dlat = km / EARTH_RADIUS_KM * 180.0 / std::f64::consts::PI;
                let s = (lat - dlat).max(-90.0);
                let n = (lat + dlat).min(90.0);
                let coslat = lat.abs().max(s.abs()).max(n.abs()).to_radians().cos();
                if n >= 90.0 || s <= -90.0 || coslat < 1e-9 {
                    return vec![[-180.0, s, 180.0, n]];
                }
                let dlon = (dlat / coslat).min(180.0);
                let (w, e) = (lon - dlon, lon + dlon);
                if dlon >= 180.0 {
                    vec![[-180.0, s, 180.0, n]]
                } else if w < -180.0 {
                    vec![[w + 360.0, s, 180.0, n], [-180.0, s, e, n]]
                } else if e > 180.0 {
                    vec![[w, s, 180.0, n], [-180.0, s, e - 360.0, n]]
                } else {
                    vec![[w, s, e, n]]
                }
            }
            Region::Polygon(mp) => {
                use geo::BoundingRect;
                match mp.bounding_rect() {
                    Some(r) => vec![[r.min().x, r.min().y, r.max().x, r.max().y]],
                    None => vec![],
                }
            }
            Region::Geohash(h) => hash::decode_bounds(h).map(|b| vec![b]).unwrap_or_default(),
        }
    }

    /// Whether a position is in the region, boundary included.
    #[inline]
    pub fn contains_point(&self, lon: f64, lat: f64) -> bool {
        match self {
            Region::BBox([w, s, e, n]) => {
                let lat_ok = *s <= lat && lat <= *n;
                if w <= e {
                    lat_ok && *w <= lon && lon <= *e
                } else {
                    lat_ok && (*w <= lon || lon <= *e)
                }
            }
            Region::Circle { km, .. } => self.distance_km(lon, lat).is_some_and(|d| d <= *km),
            Region::Polygon(mp) => mp.intersects(&Point::new(lon, lat)),
            Region::Geohash(h) => match hash::decode_prefix(h) {
                Ok((z, bits)) => {
                    let (lo, hi) = hash::prefix_range(z, bits);
                    let zz = hash::zorder(lon, lat);
                    lo <= zz && zz <= hi
                }
                Err(_) => false,
            },
        }
    }

    /// Whether a footprint (a closed lon/lat ring) intersects the region, boundary included.
    pub fn intersects_ring(&self, ring: &[[f64; 2]]) -> bool {
        let poly = ring_polygon(ring);
        match self {
            Region::BBox(_) | Region::Geohash(_) => self.bboxes().iter().any(|b| {
                let r = Rect::new(Coord { x: b[0], y: b[1] }, Coord { x: b[2], y: b[3] });
                r.intersects(&poly)
            }),
            Region::Circle { lon, lat, km } => {
                let c = Point::new(*lon, *lat);
                if poly.contains(&c) {
                    return true;
                }
                match poly.exterior().haversine_closest_point(&c) {
                    Closest::Intersection(_) => true,
                    Closest::SinglePoint(p) => Haversine.distance(c, p) / 1000.0 <= *km,
                    Closest::Indeterminate => false,
                }
            }
            Region::Polygon(mp) => mp.intersects(&poly),
        }
    }

    /// Great-circle distance in km from the region's centre, for circles.
    pub fn distance_km(&self, lon: f64, lat: f64) -> Option<f64> {
        match self {
            Region::Circle { lon: clon, lat: clat, .. } => {
                Some(Haversine.distance(Point::new(*clon, *clat), Point::new(lon, lat)) / 1000.0)
            }
            _ => None,
        }
    }
}

/// [`Region::contains_point`] prepared for testing many points: the answer is the same,
/// found without trigonometry or polygon walks for most points. Points outside the region's
/// boxes are refused at once; for a circle, points inside a box proven to lie within it are
/// accepted at once; a geohash prefix is decoded once, not per point.
pub struct PointTest<'a> {
    region: &'a Region,
    outer: Vec<[f64; 4]>,
    inner: Option<[f64; 4]>,
    band: Option<CircleBand>,
    zrange: Option<(u64, u64)>,
    /// A polygon region's polygons, each with its bounding box `[w, s, e, n]`, so that a
    /// point is walked against only the rings whose box holds it (geo's multipolygon test
    /// recomputes every box on every call).
    polys: Vec<([f64; 4], &'a Polygon<f64>)>,
    /// A box region's boxes (two across the antimeridian), for [`PointTest::cell`].
    boxes: Vec<[f64; 4]>,
    /// [`PointTest::cell`]'s verdicts per block of cells, made on its first call.
    raster: OnceCell<Option<Raster>>,
    /// A circle's test of whole key cells.
    circle_cells: Option<CircleCells>,
}

/// Bits of a key cell's 20-bit longitude or latitude index that [`cell_centre`] takes by
/// series rather than from its table.
const TRIG_LOW_BITS: u32 = 10;

/// `(sin, cos)` of the start of every block of 2^[`TRIG_LOW_BITS`] key cells, latitude and
/// longitude (radians), made once.
fn trig_tables() -> &'static [Vec<(f64, f64)>; 2] {
    static T: std::sync::OnceLock<[Vec<(f64, f64)>; 2]> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let n = 1usize << (CELL_INDEX_BITS - TRIG_LOW_BITS);
        let table = |base: f64, span: f64| (0..n).map(|i| (base + span * i as f64 / n as f64).sin_cos()).collect();
        [table(-std::f64::consts::FRAC_PI_2, std::f64::consts::PI), table(-std::f64::consts::PI, 2.0 * std::f64::consts::PI)]
    })
}

/// `(sin, cos)` of the centre of key cell `v` (a 20-bit index) of the axis whose cells span
/// `step` radians, from `table` and the angle-addition formula with a series for the part
/// below the table's block (under 0.0062 rad: the series' error is below 1e-19).
#[inline]
fn cell_centre(table: &[(f64, f64)], v: u32, step: f64) -> (f64, f64) {
    let (sa, ca) = table.get((v >> TRIG_LOW_BITS) as usize).copied().unwrap_or((0.0, 1.0));
    let b = (f64::from(v & ((1 << TRIG_LOW_BITS) - 1)) + 0.5) * step;
    let b2 = b * b;
    let sb = b * (1.0 - b2 / 6.0 * (1.0 - b2 / 20.0));
    let cb = 1.0 - b2 / 2.0 * (1.0 - b2 / 12.0 * (1.0 - b2 / 30.0));
    (sa * cb + ca * sb, ca * cb - sa * sb)
}

/// A circle's verdict for a whole key cell without trigonometry: the cosine of the great-circle
/// distance to the cell's centre (from [`cell_centre`]) against the cosines of the radius less
/// and plus the cell's reach (every point of a cell is within half its height plus half its
/// width of its centre).
#[derive(Debug, Clone, Copy)]
struct CircleCells {
    sin_lat: f64,
    cos_lat: f64,
    sin_lon: f64,
    cos_lon: f64,
    /// `cos(ρ − reach)` (+∞ where ρ ≤ reach: never inside) and `cos(ρ + reach)` (−∞ where ρ +
    /// reach ≥ π: never outside), each moved 1e-12 the safe way.
    inside_cos: f64,
    outside_cos: f64,
}

impl CircleCells {
    fn new(lon: f64, lat: f64, km: f64) -> Option<Self> {
        let rho = km / EARTH_RADIUS_KM;
        if !(rho >= 0.0 && rho.is_finite()) {
            return None;
        }
        let cells = f64::from(1u32 << CELL_INDEX_BITS);
        let reach = (std::f64::consts::PI / cells / 2.0 + std::f64::consts::PI / cells) * 1.001 + CELL_SLACK_DEG.to_radians() * 2.0;
        let (sin_lat, cos_lat) = lat.to_radians().sin_cos();
        let (sin_lon, cos_lon) = lon.to_radians().sin_cos();
        let inside_cos = if rho > reach { (rho - reach).cos() + 1e-12 } else { f64::INFINITY };
        let outside_cos = if rho + reach < std::f64::consts::PI { (rho + reach).cos() - 1e-12 } else { f64::NEG_INFINITY };
        Some(CircleCells { sin_lat, cos_lat, sin_lon, cos_lon, inside_cos, outside_cos })
    }

    #[inline]
    fn decide(&self, key: u64) -> Option<bool> {
        let drop = 32 - CELL_INDEX_BITS;
        let (x, y) = hash::split(key);
        let [lat_t, lon_t] = trig_tables();
        let cells = f64::from(1u32 << CELL_INDEX_BITS);
        let (sp, cp) = cell_centre(lat_t, y >> drop, std::f64::consts::PI / cells);
        let (sl, cl) = cell_centre(lon_t, x >> drop, 2.0 * std::f64::consts::PI / cells);
        let cos_d = self.sin_lat * sp + self.cos_lat * cp * (cl * self.cos_lon + sl * self.sin_lon);
        if cos_d >= self.inside_cos {
            Some(true)
        } else if cos_d <= self.outside_cos {
            Some(false)
        } else {
            None
        }
    }
}

/// A grid of up to [`RASTER_SIDE`]² aligned blocks of key cells over a region's one box, each
/// block's verdict found the first time a key falls in it: 0 not yet, 1 inside, 2 outside,
/// 3 on the edge. A block on the edge gets a grid of its own, as fine again; a key in one of
/// its blocks on the edge has its own cell tested. A block is a geohash cell of a coarser
/// level, so a key's cell lies in exactly one block: a lookup or two decides most keys of a
/// large polygon, where testing each key's cell costs a walk of its rings.
struct Raster {
    /// Block size in key cells, as shifts of the cell indices (longitude, latitude).
    shift: (u32, u32),
    /// The first block and the grid's size in blocks.
    origin: (u32, u32),
    size: (u32, u32),
    verdicts: Vec<Cell<u8>>,
    /// The finer grids of blocks on the edge (none at the finer level).
    finer: Option<Vec<OnceCell<Box<Raster>>>>,
}

/// Blocks per side of a [`Raster`], at most.
const RASTER_SIDE: u32 = 16;

/// Bits of a key cell's longitude (and latitude) index.
const CELL_INDEX_BITS: u32 = crate::store::KEY_GEO_BITS / 2;

impl Raster {
    /// A raster over `b` (`[w, s, e, n]`, `w <= e`), with finer grids on its edge.
    fn over(b: &[f64; 4]) -> Raster {
        let drop = 32 - CELL_INDEX_BITS;
        let x = (hash::q_lon(b[0] - CELL_SLACK_DEG) >> drop, hash::q_lon(b[2] + CELL_SLACK_DEG) >> drop);
        let y = (hash::q_lat(b[1] - CELL_SLACK_DEG) >> drop, hash::q_lat(b[3] + CELL_SLACK_DEG) >> drop);
        Raster::cells(x, y, true)
    }

    /// A raster over the key cells `x.0..=x.1` × `y.0..=y.1`.
    fn cells(x: (u32, u32), y: (u32, u32), finer: bool) -> Raster {
        let shift_for = |(lo, hi): (u32, u32)| (0..32).find(|&s| (hi >> s) - (lo >> s) < RASTER_SIDE).unwrap_or(31);
        let shift = (shift_for(x), shift_for(y));
        let origin = (x.0 >> shift.0, y.0 >> shift.1);
        let size = ((x.1 >> shift.0) - origin.0 + 1, (y.1 >> shift.1) - origin.1 + 1);
        let n = (size.0 * size.1) as usize;
        Raster { shift, origin, size, verdicts: (0..n).map(|_| Cell::new(0)).collect(), finer: finer.then(|| (0..n).map(|_| OnceCell::new()).collect()) }
    }

    /// The verdict for `key` ([`PointTest::cell`]), `test` deciding a block's box once.
    fn verdict(&self, key: u64, test: &impl Fn(&[f64; 4]) -> Option<bool>) -> Option<bool> {
        let Some(i) = self.block(key) else { return Some(false) };
        let v = self.verdicts.get(i)?;
        let mut code = v.get();
        if code == 0 {
            code = match test(&self.bounds(i)) {
                Some(true) => 1,
                Some(false) => 2,
                None => 3,
            };
            v.set(code);
        }
        match code {
            1 => Some(true),
            2 => Some(false),
            _ => {
                let finer = self.finer.as_ref()?.get(i)?.get_or_init(|| {
                    let (bx, by) = (i as u32 % self.size.0 + self.origin.0, i as u32 / self.size.0 + self.origin.1);
                    let span = |b: u32, s: u32| (b << s, ((b + 1) << s) - 1);
                    Box::new(Raster::cells(span(bx, self.shift.0), span(by, self.shift.1), false))
                });
                finer.verdict(key, test)
            }
        }
    }

    /// The block of `key`'s cell: its index, or `None` outside the grid (and so outside the
    /// box).
    #[inline]
    fn block(&self, key: u64) -> Option<usize> {
        let drop = 32 - CELL_INDEX_BITS;
        let (x, y) = hash::split(key);
        let bx = ((x >> drop) >> self.shift.0).checked_sub(self.origin.0).filter(|&v| v < self.size.0)?;
        let by = ((y >> drop) >> self.shift.1).checked_sub(self.origin.1).filter(|&v| v < self.size.1)?;
        Some((by * self.size.0 + bx) as usize)
    }

    /// Block `i`'s bounds in degrees, widened by [`CELL_SLACK_DEG`].
    fn bounds(&self, i: usize) -> [f64; 4] {
        let cells = f64::from(1u32 << CELL_INDEX_BITS);
        let (bx, by) = (i as u32 % self.size.0, i as u32 / self.size.0);
        let (x, y) = (u64::from(bx + self.origin.0) << self.shift.0, u64::from(by + self.origin.1) << self.shift.1);
        let lon = |c: u64| -180.0 + c as f64 * 360.0 / cells;
        let lat = |c: u64| -90.0 + c as f64 * 180.0 / cells;
        [lon(x) - CELL_SLACK_DEG, lat(y) - CELL_SLACK_DEG, lon(x + (1 << self.shift.0)) + CELL_SLACK_DEG, lat(y + (1 << self.shift.1)) + CELL_SLACK_DEG]
    }
}

/// Trigonometry-free bounds on a point's great-circle distance from a circle's centre, for
/// points inside the circle's bounding boxes. On the sphere `ds² = dφ² + cos²φ dλ²` (radians):
/// the straight path in (φ, λ) between centre and point has length ≤ √(Δφ² + c_max²·Δλ²), so
/// that bounds the distance from above; any path (the geodesic included) is ≥ √(Δφ² +
/// c_min²·Δλ²), where `c_min`/`c_max` are the least/largest cos φ the paths can reach. Both
/// paths stay within `D` = the boxes' half-height + half-width of the centre (D bounds every
/// such distance), so the cosines are taken over φ₀ ± D. Only points in the thin band between
/// the two bounds need the haversine.
#[derive(Debug, Clone, Copy)]
struct CircleBand {
    lat0: f64,
    lon0: f64,
    /// ρ² shrunk / grown by a relative 1e-7, so float rounding in the bounds or in the
    /// haversine cannot flip an answer.
    inside2: f64,
    outside2: f64,
    cmax2: f64,
    cmin2: f64,
}

impl CircleBand {
    fn new(lon: f64, lat: f64, km: f64, boxes: &[[f64; 4]]) -> Option<Self> {
        let rho = km / EARTH_RADIUS_KM;
        if !(rho > 0.0 && rho.is_finite()) || boxes.is_empty() {
            return None;
        }
        let half_h = boxes.iter().map(|b| (b[3] - lat).abs().max((lat - b[1]).abs())).fold(0.0, f64::max);
        let half_w = boxes.iter().map(|b| (b[2] - lon).abs().max((lon - b[0]).abs())).fold(0.0, f64::max).min(180.0);
        let d = (half_h + half_w).to_radians();
        let p0 = lat.to_radians();
        let (lo, hi) = (p0 - d, p0 + d);
        let half_pi = std::f64::consts::FRAC_PI_2;
        let cmax = if lo <= 0.0 && hi >= 0.0 { 1.0 } else { lo.abs().min(hi.abs()).min(half_pi).cos() };
        let cmin = if lo <= -half_pi || hi >= half_pi { 0.0 } else { lo.abs().max(hi.abs()).cos() };
        Some(CircleBand {
            lat0: p0,
            lon0: lon.to_radians(),
            inside2: (rho * (1.0 - 1e-7)).powi(2),
            outside2: (rho * (1.0 + 1e-7)).powi(2),
            cmax2: (cmax * (1.0 + 1e-12)).min(1.0).powi(2),
            cmin2: (cmin * (1.0 - 1e-12)).max(0.0).powi(2),
        })
    }

    /// `Some(inside)` when the bounds decide, `None` in the band.
    #[inline]
    fn decide(&self, lon: f64, lat: f64) -> Option<bool> {
        let dphi = lat.to_radians() - self.lat0;
        let mut dl = (lon.to_radians() - self.lon0).abs();
        if dl > std::f64::consts::PI {
            dl = 2.0 * std::f64::consts::PI - dl;
        }
        let (p2, l2) = (dphi * dphi, dl * dl);
        if p2 + self.cmax2 * l2 <= self.inside2 {
            return Some(true);
        }
        if p2 + self.cmin2 * l2 >= self.outside2 {
            return Some(false);
        }
        None
    }
}

impl<'a> PointTest<'a> {
    /// Prepare `region`.
    pub fn new(region: &'a Region) -> Self {
        let zrange = match region {
            Region::Geohash(h) => Some(hash::decode_prefix(h).map_or((1, 0), |(z, bits)| hash::prefix_range(z, bits))),
            _ => None,
        };
        let inner = match region {
            Region::Circle { lon, lat, km } => circle_inner_box(*lon, *lat, *km),
            _ => None,
        };
        let outer = match region {
            Region::Circle { .. } | Region::Polygon(_) => region.bboxes(),
            _ => Vec::new(),
        };
        let band = match region {
            Region::Circle { lon, lat, km } => CircleBand::new(*lon, *lat, *km, &outer),
            _ => None,
        };
        let polys = match region {
            Region::Polygon(mp) => mp
                .0
                .iter()
                .filter_map(|p| {
                    use geo::BoundingRect;
                    p.bounding_rect().map(|r| ([r.min().x, r.min().y, r.max().x, r.max().y], p))
                })
                .collect(),
            _ => Vec::new(),
        };
        let boxes = match region {
            Region::BBox(_) => region.bboxes(),
            _ => Vec::new(),
        };
        let circle_cells = match region {
            Region::Circle { lon, lat, km } => CircleCells::new(*lon, *lat, *km),
            _ => None,
        };
        PointTest { region, outer, inner, band, zrange, polys, boxes, raster: OnceCell::new(), circle_cells }
    }

    /// Whether a position is in the region, boundary included.
    #[inline]
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        let inb = |b: &[f64; 4]| b[0] <= lon && lon <= b[2] && b[1] <= lat && lat <= b[3];
        if let Some(range) = self.zrange {
            return in_zrange(range, lon, lat);
        }
        if self.inner.as_ref().is_some_and(inb) {
            return true;
        }
        if !self.outer.is_empty() && !self.outer.iter().any(inb) {
            return false;
        }
        if let Some(inside) = self.band.as_ref().and_then(|b| b.decide(lon, lat)) {
            return inside;
        }
        if let Region::Polygon(_) = self.region {
            // As `MultiPolygon::intersects(Point)`: inside or on the boundary of any polygon.
            use geo::coordinate_position::{CoordPos, CoordinatePosition};
            let c = Coord { x: lon, y: lat };
            return self.polys.iter().any(|(b, p)| inb(b) && p.coordinate_position(&c) != CoordPos::Outside);
        }
        self.region.contains_point(lon, lat)
    }
}

/// How far (degrees) [`PointTest::cell`] widens a cell on every side: float rounding in the
/// quantisation can put a point a few 1e-14° outside its cell's computed bounds.
const CELL_SLACK_DEG: f64 = 1e-9;

/// Whether the closed boxes `a` and `b` (`[w, s, e, n]`) meet.
#[inline]
fn boxes_meet(a: &[f64; 4], b: &[f64; 4]) -> bool {
    a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3]
}

/// Whether the segment `a`–`b` meets the closed box `c`, or may (rounding errs on yes): their
/// boxes meet and the box's corners are not all strictly on one side of the segment's line.
#[inline]
fn segment_meets_box(a: Coord<f64>, b: Coord<f64>, c: &[f64; 4]) -> bool {
    if !boxes_meet(&[a.x.min(b.x), a.y.min(b.y), a.x.max(b.x), a.y.max(b.y)], c) {
        return false;
    }
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    let side = |x: f64, y: f64| dx * (y - a.y) - dy * (x - a.x);
    let s = [side(c[0], c[1]), side(c[2], c[1]), side(c[0], c[3]), side(c[2], c[3])];
    // A relative margin: corners within rounding of the line count as on it.
    let eps = 1e-9 * (dx.abs() + dy.abs()) * (1.0 + c[0].abs().max(c[2].abs()) + c[1].abs().max(c[3].abs()));
    !(s.iter().all(|&v| v > eps) || s.iter().all(|&v| v < -eps))
}

/// Whether box `inner` lies in box `outer`.
#[inline]
fn box_holds(outer: &[f64; 4], inner: &[f64; 4]) -> bool {
    outer[0] <= inner[0] && inner[2] <= outer[2] && outer[1] <= inner[1] && inner[3] <= outer[3]
}

impl PointTest<'_> {
    /// The answer of [`PointTest::contains`] for every position whose record key is `key`,
    /// when one answer holds for the whole of the key's geohash cell (the top
    /// [`crate::store::KEY_GEO_BITS`] bits: ~38 m × 19 m); `None` when the cell meets the
    /// region's edge or the cheap tests cannot tell. Lets a scan decide most rows of a large
    /// region from the key it already holds, without reading the row's position.
    pub fn cell(&self, key: u64) -> Option<bool> {
        if let Some(r) = self.raster.get_or_init(|| self.raster_box().map(|b| Raster::over(&b))) {
            if let Some(v) = r.verdict(key, &|b| self.cell_box(b)) {
                return Some(v);
            }
        }
        self.key_cell(key)
    }

    /// The one box outside which no point of the region lies, where there is one (not across
    /// the antimeridian), for a region whose cells cost more than a raster lookup: a polygon.
    /// Not a box (its own cells cost four comparisons; a raster over it was slower at 1M
    /// rows) nor a circle ([`CircleCells`] decides a cell in a few multiplications).
    fn raster_box(&self) -> Option<[f64; 4]> {
        match (self.region, self.outer.as_slice()) {
            (Region::Polygon(_), [b]) => Some(*b),
            _ => None,
        }
    }

    /// [`PointTest::cell`] from the key's own cell alone.
    fn key_cell(&self, key: u64) -> Option<bool> {
        let bits = crate::store::KEY_GEO_BITS;
        if let Some((lo, hi)) = self.zrange {
            let low = u64::MAX >> bits;
            let (a, b) = (key & !low, key | low);
            return if lo <= a && b <= hi {
                Some(true)
            } else if b < lo || a > hi {
                Some(false)
            } else {
                None
            };
        }
        if let Some(v) = self.circle_cells.as_ref().and_then(|c| c.decide(key)) {
            return Some(v);
        }
        let [w, s, e, n] = hash::cell_bounds(key, bits);
        self.cell_box(&[w - CELL_SLACK_DEG, s - CELL_SLACK_DEG, e + CELL_SLACK_DEG, n + CELL_SLACK_DEG])
    }

    /// `Some(inside)` when every point of the closed box `c` (`[w, s, e, n]`, `w <= e`) is
    /// inside the region, or none is; `None` when the box may meet the region's edge.
    fn cell_box(&self, c: &[f64; 4]) -> Option<bool> {
        let c = *c;
        match self.region {
            Region::BBox(_) => {
                if self.boxes.iter().any(|b| box_holds(b, &c)) {
                    Some(true)
                } else if !self.boxes.iter().any(|b| boxes_meet(b, &c)) {
                    Some(false)
                } else {
                    None
                }
            }
            // Decided before the box is asked for, where they can be: a circle's key cells by
            // `CircleCells` (a cell it leaves is on the rim), a geohash's by its key range.
            Region::Circle { .. } | Region::Geohash(_) => None,
            Region::Polygon(_) => {
                // No ring edge meets the cell: the whole cell is on its centre's side.
                let mut near = self.polys.iter().filter(|(b, _)| boxes_meet(b, &c)).peekable();
                if near.peek().is_none() {
                    return Some(false);
                }
                for (_, p) in near {
                    for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
                        if ring.lines().any(|l| segment_meets_box(l.start, l.end, &c)) {
                            return None;
                        }
                    }
                }
                Some(self.contains((c[0] + c[2]) / 2.0, (c[1] + c[3]) / 2.0))
            }
        }
    }
}

/// Whether a position's z-order value lies in `[lo, hi]` (a geohash prefix's range). Kept out
/// of line: inlined, the compiler computed the z-order (two `floor` calls and the bit
/// interleave) for every point before looking at whether the region is a geohash at all,
/// which cost bbox, circle and polygon tests about a fifth of their time.
#[inline(never)]
fn in_zrange((lo, hi): (u64, u64), lon: f64, lat: f64) -> bool {
    let z = hash::zorder(lon, lat);
    lo <= z && z <= hi
}

/// A lon/lat box inside the circle (every point of it within `km` of the centre by the same
/// haversine distance [`Region::contains_point`] uses, with a margin), or `None` where the
/// circle is too large or too near a pole or the antimeridian for the simple box.
fn circle_inner_box(lon: f64, lat: f64, km: f64) -> Option<[f64; 4]> {
    let rho = km / EARTH_RADIUS_KM;
    if !(rho > 0.0 && rho < 0.5) {
        return None;
    }
    // Half-sides in radians: a square of half-diagonal ρ, shrunk a little.
    let a = rho / std::f64::consts::SQRT_2 * 0.99;
    let (p0, l0) = (lat.to_radians(), lon.to_radians());
    let (s, n) = (p0 - a, p0 + a);
    let half_pi = std::f64::consts::FRAC_PI_2;
    if s <= -half_pi + 1e-6 || n >= half_pi - 1e-6 {
        return None;
    }
    let cos_far = s.abs().max(n.abs()).cos();
    let b = a / cos_far;
    if l0 - b < -std::f64::consts::PI || l0 + b > std::f64::consts::PI {
        return None;
    }
    // Haversine: hav(d) = sin²(Δφ/2) + cos φ₀ cos φ sin²(Δλ/2), largest over the box at
    // |Δφ| = a, |Δλ| = b and the largest cos φ in the box.
    let cos_near = if s <= 0.0 && n >= 0.0 { 1.0 } else { s.abs().min(n.abs()).cos() };
    let hav = (a / 2.0).sin().powi(2) + p0.cos() * cos_near * (b / 2.0).sin().powi(2);
    let d = 2.0 * hav.sqrt().min(1.0).asin();
    (d <= rho * 0.999).then(|| [(l0 - b).to_degrees(), s.to_degrees(), (l0 + b).to_degrees(), n.to_degrees()])
}

/// A polygon from a closed lon/lat ring.
pub fn ring_polygon(ring: &[[f64; 2]]) -> Polygon<f64> {
    Polygon::new(LineString::from(ring.iter().map(|[x, y]| (*x, *y)).collect::<Vec<_>>()), vec![])
}

fn geom_name(g: &geo::Geometry<f64>) -> &'static str {
    match g {
        geo::Geometry::Point(_) => "a point",
        geo::Geometry::Line(_) | geo::Geometry::LineString(_) | geo::Geometry::MultiLineString(_) => "a line",
        geo::Geometry::MultiPoint(_) => "points",
        _ => "another geometry",
    }
}

fn check_wkt_rings_closed(at: &str, text: &str) -> Result<()> {
    let g: wkt::Wkt<f64> = text.parse().map_err(|e| Error::invalid(at, format!("not valid WKT: {e}")))?;
    let polys: Vec<&wkt::types::Polygon<f64>> = match &g {
        wkt::Wkt::Polygon(p) => vec![p],
        wkt::Wkt::MultiPolygon(mp) => mp.polygons().iter().collect(),
        _ => return Ok(()),
    };
    for (pi, p) in polys.iter().enumerate() {
        for (ri, ring) in p.rings().iter().enumerate() {
            let cs = ring.coords();
            let closed = match (cs.first(), cs.last()) {
                (Some(a), Some(b)) => a.x == b.x && a.y == b.y,
                _ => false,
            };
            if !closed {
                return Err(Error::invalid(at, format!("polygon {} ring {} does not close (first and last positions differ)", pi + 1, ri + 1)));
            }
        }
    }
    Ok(())
}

fn check_geojson_rings_closed(at: &str, gj: &geojson::GeoJson) -> Result<()> {
    use geojson::{GeoJson, Value};
    fn check_rings(at: &str, rings: &[Vec<Vec<f64>>]) -> Result<()> {
        for (ri, ring) in rings.iter().enumerate() {
            if ring.first() != ring.last() || ring.len() < 4 {
                return Err(Error::invalid(at, format!("ring {} does not close (first and last positions differ) or has fewer than 4 positions", ri + 1)));
            }
        }
        Ok(())
    }
    fn check_value(at: &str, v: &Value) -> Result<()> {
        match v {
            Value::Polygon(rings) => check_rings(at, rings),
            Value::MultiPolygon(polys) => polys.iter().try_for_each(|r| check_rings(at, r)),
            _ => Ok(()),
        }
    }
    match gj {
        GeoJson::Geometry(g) => check_value(at, &g.value),
        GeoJson::Feature(f) => f.geometry.as_ref().map_or(Ok(()), |g| check_value(at, &g.value)),
        GeoJson::FeatureCollection(fc) => fc
            .features
            .iter()
            .filter_map(|f| f.geometry.as_ref())
            .try_for_each(|g| check_value(at, &g.value)),
    }
}

/// Everything a query filters on: regions (all must hold), an inclusive time range, a kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Regions; a record must match every one.
    pub regions: Vec<Region>,
    /// Earliest time, microseconds since the epoch, inclusive.
    pub from: Option<i64>,
    /// Latest time, inclusive.
    pub to: Option<i64>,
    /// Tiles or photos only.
    pub kind: Option<Kind>,
}

impl Filter {
    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty() && self.from.is_none() && self.to.is_none() && self.kind.is_none()
    }

    /// Whether a time passes. Records with no time fail any time bound.
    pub fn time_ok(&self, t: Option<i64>) -> bool {
        match (self.from, self.to) {
            (None, None) => true,
            _ => t.is_some_and(|t| self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|x| t <= x)),
        }
    }

    /// Boxes `[w, s, e, n]` (each `w <= e`) whose union contains every matching position:
    /// the intersection of each region's boxes. `None` means the whole world.
    pub fn bboxes(&self) -> Option<Vec<[f64; 4]>> {
        let mut acc: Option<Vec<[f64; 4]>> = None;
        for r in &self.regions {
            let bs = r.bboxes();
            acc = Some(match acc {
                None => bs,
                Some(prev) => {
                    let mut out = Vec::new();
                    for a in &prev {
                        for b in &bs {
                            let c = [a[0].max(b[0]), a[1].max(b[1]), a[2].min(b[2]), a[3].min(b[3])];
                            if c[0] <= c[2] && c[1] <= c[3] {
                                out.push(c);
                            }
                        }
                    }
                    out
                }
            });
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn antimeridian_bbox_contains_both_sides() {
        let r = Region::bbox(170.0, -10.0, -170.0, 10.0).unwrap();
        assert!(r.contains_point(175.0, 0.0));
        assert!(r.contains_point(-175.0, 0.0));
        assert!(r.contains_point(180.0, 10.0));
        assert!(!r.contains_point(0.0, 0.0));
    }

    #[test]
    fn polygon_boundary_and_holes() {
        let r = Region::parse_polygon("p", "POLYGON((0 0,10 0,10 10,0 10,0 0),(4 4,6 4,6 6,4 6,4 4))").unwrap();
        assert!(r.contains_point(0.0, 5.0), "boundary included");
        assert!(r.contains_point(2.0, 2.0));
        assert!(!r.contains_point(5.0, 5.0), "inside the hole");
        assert!(r.contains_point(4.0, 5.0), "hole boundary counts as boundary");
        assert!(!r.contains_point(11.0, 5.0));
    }

    #[test]
    fn unclosed_polygon_is_refused() {
        let e = Region::parse_polygon("q.wkt", "POLYGON((0 0,10 0,10 10,0 10))").unwrap_err().to_string();
        assert!(e.contains("q.wkt") && e.contains("close"), "{e}");
        let e = Region::parse_polygon("q.geojson", r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("q.geojson") && e.contains("close"), "{e}");
    }

    #[test]
    fn circle_distance_and_antimeridian_boxes() {
        let r = Region::circle(179.9, 0.0, 50.0).unwrap();
        assert!(r.contains_point(-179.9, 0.0), "22 km across the antimeridian");
        assert_eq!(r.bboxes().len(), 2);
        let d = r.distance_km(-179.9, 0.0).unwrap();
        assert!((d - 22.24).abs() < 0.05, "{d}");
        let polar = Region::circle(0.0, 89.9, 100.0).unwrap();
        assert!(polar.contains_point(180.0, 89.5));
    }

    #[test]
    fn tile_footprint_intersection() {
        let ring = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]];
        assert!(Region::bbox(0.5, 0.5, 2.0, 2.0).unwrap().intersects_ring(&ring));
        assert!(Region::bbox(1.0, 1.0, 2.0, 2.0).unwrap().intersects_ring(&ring), "touching corner");
        assert!(!Region::bbox(1.1, 1.1, 2.0, 2.0).unwrap().intersects_ring(&ring));
        assert!(Region::circle(1.5, 0.5, 60.0).unwrap().intersects_ring(&ring), "edge within 55.6 km");
        assert!(!Region::circle(1.5, 0.5, 50.0).unwrap().intersects_ring(&ring));
    }

    #[test]
    fn point_test_agrees_with_contains_point() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut regions = vec![
            Region::circle(2.35, 48.85, 50.0).unwrap(),
            Region::circle(179.9, 0.0, 100.0).unwrap(),
            Region::circle(0.0, 89.0, 300.0).unwrap(),
            Region::circle(-70.0, -45.0, 2000.0).unwrap(),
            Region::circle(10.0, 0.0, 0.5).unwrap(),
            Region::bbox(170.0, -10.0, -170.0, 10.0).unwrap(),
            Region::Geohash("u09".into()),
        ];
        regions.push(Region::parse_polygon("--polygon", "POLYGON((0 0, 10 0, 10 10, 0 10, 0 0), (3 3, 6 3, 6 6, 3 6, 3 3))").unwrap());
        let mut inner_hits = 0;
        for r in &regions {
            let t = PointTest::new(r);
            let bs = r.bboxes();
            for _ in 0..20_000 {
                // Half the points near the region, half anywhere.
                let (lon, lat) = match bs.first() {
                    Some(b) if rng.random_bool(0.5) => (
                        rng.random_range((b[0] - 1.0).max(-180.0)..=(b[2] + 1.0).min(180.0)),
                        rng.random_range((b[1] - 1.0).max(-90.0)..=(b[3] + 1.0).min(90.0)),
                    ),
                    _ => (rng.random_range(-180.0..=180.0), rng.random_range(-90.0..=90.0)),
                };
                assert_eq!(t.contains(lon, lat), r.contains_point(lon, lat), "{r:?} at {lon}, {lat}");
                inner_hits += usize::from(t.inner.is_some_and(|b| b[0] <= lon && lon <= b[2] && b[1] <= lat && lat <= b[3]));
            }
        }
        assert!(inner_hits > 300, "the inner box should take part: {inner_hits}");
        // Two polygons (one with a hole) on a half-degree lattice: points on edges, vertices
        // and the hole's boundary, inside one polygon's box but outside it, and between them.
        let mp = Region::parse_polygon("--polygon", "MULTIPOLYGON(((0 0, 10 0, 10 10, 0 10, 0 0), (3 3, 6 3, 6 6, 3 6, 3 3)), ((20 20, 30 20, 25 28, 20 20)))").unwrap();
        let t = PointTest::new(&mp);
        let (mut inside, mut total) = (0, 0);
        for i in -2..=62 {
            for j in -2..=62 {
                let (lon, lat) = (f64::from(i) * 0.5, f64::from(j) * 0.5);
                let want = mp.contains_point(lon, lat);
                assert_eq!(t.contains(lon, lat), want, "multipolygon at {lon}, {lat}");
                inside += usize::from(want);
                total += 1;
            }
        }
        assert!(inside > 400 && inside < total / 2, "{inside} of {total} inside");
        // Points within ±2 % of a circle's radius, where the trig-free bounds are tightest:
        // every answer must agree, and for circles of city size away from the poles most
        // must come from the bounds (the band is ~tan φ · (circle's extent) wide).
        use geo::Destination;
        for r in regions.iter().filter(|r| matches!(r, Region::Circle { .. })) {
            let Region::Circle { lon, lat, km } = *r else { continue };
            let t = PointTest::new(r);
            let mut decided = 0;
            for _ in 0..20_000 {
                let d = km * 1000.0 * rng.random_range(0.98..1.02);
                let p = Haversine.destination(Point::new(lon, lat), rng.random_range(0.0..360.0), d);
                assert_eq!(t.contains(p.x(), p.y()), r.contains_point(p.x(), p.y()), "{r:?} at {}, {} ({d} m)", p.x(), p.y());
                decided += usize::from(t.band.is_some_and(|b| b.decide(p.x(), p.y()).is_some()));
            }
            if km <= 100.0 && lat.abs() < 60.0 {
                assert!(decided > 8_000, "{r:?}: the distance bounds decided only {decided} of 20,000 boundary points");
            }
        }
    }

    #[test]
    fn cell_verdicts_hold_for_every_point_of_the_cell() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut regions = vec![
            Region::circle(2.35, 48.85, 50.0).unwrap(),
            Region::circle(179.9, 0.0, 100.0).unwrap(),
            Region::circle(0.0, 89.0, 300.0).unwrap(),
            Region::circle(-70.0, -45.0, 4000.0).unwrap(),
            Region::circle(10.0, 0.0, 0.05).unwrap(),
            Region::bbox(170.0, -10.0, -170.0, 10.0).unwrap(),
            Region::bbox(-3.0, 50.0, 1.5, 53.25).unwrap(),
            Region::circle(-20.0, 10.0, 0.0).unwrap(),
            Region::Geohash("u09".into()),
            Region::Geohash("u09tvw0f6".into()),
        ];
        regions.push(Region::parse_polygon("--polygon", "MULTIPOLYGON(((0 0, 10 0, 10 10, 0 10, 0 0), (3 3, 6 3, 6 6, 3 6, 3 3)), ((20 20, 30 20, 25 28, 20 20)))").unwrap());
        regions.push(Region::parse_polygon("--polygon", "POLYGON((-1 -1, 1 -1, 0.0001 0, 1 1, -1 1, -1 -1))").unwrap());
        let low = u64::MAX >> crate::store::KEY_GEO_BITS;
        for r in &regions {
            let t = PointTest::new(r);
            let b = r.bboxes()[0];
            let (mut decided, mut undecided, mut far) = (0usize, 0usize, 0usize);
            for i in 0..6_000 {
                // Cells anywhere, near the region, and within a few cells of its edge (a
                // point on the boundary nudged by up to ~100 m).
                let (lon, lat) = match i % 3 {
                    0 => (rng.random_range(-180.0..=180.0), rng.random_range(-90.0..=90.0)),
                    1 => (rng.random_range((b[0] - 0.5).max(-180.0)..=(b[2] + 0.5).min(180.0)), rng.random_range((b[1] - 0.5).max(-90.0)..=(b[3] + 0.5).min(90.0))),
                    _ => {
                        let (lon, lat) = (rng.random_range(b[0]..=b[2]), rng.random_range(b[1]..=b[3]));
                        let edge = if rng.random_bool(0.5) { lon } else { b[0] };
                        (edge + rng.random_range(-1e-3..1e-3), lat)
                    }
                };
                let z = hash::zorder(lon.clamp(-180.0, 180.0), lat.clamp(-90.0, 90.0));
                let key = (z & !low) | (rng.random::<u64>() & low);
                let Some(v) = t.cell(key) else {
                    undecided += 1;
                    continue;
                };
                decided += 1;
                // Points of the cell: its corners (the smallest and largest quantised
                // values) and random ones, each checked to quantise into the cell.
                let cb = hash::cell_bounds(key, crate::store::KEY_GEO_BITS);
                let mut pts = vec![(cb[0], cb[1]), (cb[2] - 1e-12, cb[3] - 1e-12), (cb[0], cb[3] - 1e-12), (cb[2] - 1e-12, cb[1])];
                pts.extend((0..8).map(|_| (rng.random_range(cb[0]..cb[2]), rng.random_range(cb[1]..cb[3]))));
                for (plon, plat) in pts {
                    if hash::zorder(plon, plat) & !low != key & !low {
                        continue;
                    }
                    assert_eq!(t.contains(plon, plat), v, "{r:?}: cell of key {key:#x} said {v} but {plon}, {plat} disagrees");
                }
                far += usize::from(i % 3 == 0);
            }
            // Cells anywhere are almost all far from the edge: the cheap tests must decide them.
            assert!(far > 1_900, "{r:?}: only {far} of 2,000 cells anywhere decided ({decided} decided, {undecided} not)");
        }
        // Cells well inside a region (its centre; points between a polygon's diagonal edges,
        // whose bounding boxes cover them) are decided inside, through the raster and alone.
        let inside = [(0, 2.35, 48.85), (3, -70.0, -45.0), (3, -100.0, -30.0), (6, -0.75, 51.6), (10, 25.0, 22.0), (10, 1.5, 8.5), (10, 29.0, 20.5), (11, -0.5, 0.0)];
        for (i, lon, lat) in inside {
            let t = PointTest::new(&regions[i]);
            let key = hash::zorder(lon, lat);
            assert_eq!(t.key_cell(key), Some(true), "{:?} at {lon}, {lat}, its own cell", regions[i]);
            assert_eq!(t.cell(key), Some(true), "{:?} at {lon}, {lat}", regions[i]);
        }
    }

    #[test]
    fn cell_centre_trig_matches_the_library() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let [lat_t, lon_t] = trig_tables();
        let cells = f64::from(1u32 << CELL_INDEX_BITS);
        let max = (1u32 << CELL_INDEX_BITS) - 1;
        let mut vs: Vec<u32> = vec![0, 1, 1023, 1024, max / 2, max];
        vs.extend((0..20_000).map(|_| rng.random_range(0..=max)));
        for v in vs {
            for (table, base, step) in [(lat_t, -std::f64::consts::FRAC_PI_2, std::f64::consts::PI / cells), (lon_t, -std::f64::consts::PI, 2.0 * std::f64::consts::PI / cells)] {
                let (s, c) = cell_centre(table, v, step);
                let (ws, wc) = (base + (f64::from(v) + 0.5) * step).sin_cos();
                assert!((s - ws).abs() < 1e-14 && (c - wc).abs() < 1e-14, "cell {v}: ({s}, {c}) vs ({ws}, {wc})");
            }
        }
    }
}

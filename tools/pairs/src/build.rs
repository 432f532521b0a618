//! `graft-pairs build`: photos from the database → GRAFT tiles → WebDataset shards.
//! The output format is documented in `schema/pairs.md`.

use crate::assign::{self, civil_from_days, PhotoPt, TileAssign};
use anyhow::{bail, Context, Result};
use graftdb::ingest::raster::{tile_raster, RasterOptions, WindowReader};
use graftdb::{Db, PixelRef, Record, RecordId};
use rstar::{primitives::GeomWithData, RTree, AABB};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Manifest format tag (checked by `tools/train/graft_train/data.py`).
pub const FORMAT: &str = "graft-pairs/1";

/// Options of [`build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Metres per pixel.
    pub gsd: f64,
    /// Tile side in pixels.
    pub tile_px: u32,
    /// Most photos per tile.
    pub max_photos: usize,
    /// Fraction of blocks in the test split.
    pub test_fraction: f64,
    /// Tiles per block.
    pub block: usize,
    /// Split seed.
    pub seed: u64,
    /// Photo embedding space.
    pub space: Option<String>,
    /// Samples per shard.
    pub shard_size: usize,
    /// GeoTIFF/COG files to cut tiles from besides the database's own raster tiles
    /// (`--raster`). They are tiled in memory the way `graftdb ingest raster` would
    /// (224-px windows, ≤ 50 % nodata) and never written to the database.
    pub rasters: Vec<PathBuf>,
}

/// SplitMix64: small, fast and stable across versions (the split must not change with a
/// dependency upgrade).
pub struct SplitMix(pub u64);
impl SplitMix {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Which blocks are test blocks: `round(fraction × n_blocks)` of them (at least one when the
/// fraction is positive and there are two blocks or more), chosen by a seeded Fisher–Yates.
pub fn test_blocks(n_blocks: usize, fraction: f64, seed: u64) -> Vec<bool> {
    let mut n_test = (fraction * n_blocks as f64).round() as usize;
    if fraction > 0.0 && n_test == 0 && n_blocks >= 2 {
        n_test = 1;
    }
    n_test = n_test.min(n_blocks);
    let mut order: Vec<usize> = (0..n_blocks).collect();
    let mut rng = SplitMix(seed ^ 0x6772_6166_7470_6169); // "graftpai"
    for i in (1..n_blocks).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut is_test = vec![false; n_blocks];
    for &b in &order[..n_test] {
        is_test[b] = true;
    }
    is_test
}

/// ISO-8601 UTC of microseconds since the epoch.
pub fn iso(us: i64) -> String {
    let days = us.div_euclid(86_400_000_000);
    let secs = us.rem_euclid(86_400_000_000) / 1_000_000;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

struct PhotoRow {
    key: u64,
    id: RecordId,
    time: Option<i64>,
    license: Option<String>,
}

struct StoredTile {
    /// The tile's record key; for tiles of `--raster` files (not in the database), `None`.
    key: Option<u64>,
    footprint: Vec<[f64; 2]>,
    gsd_m: f64,
    time: Option<i64>,
    cloud: Option<f32>,
    path: String,
    window: [u32; 4],
}

impl StoredTile {
    /// A tile whose pixels are a window of a raster file; `None` for stored or absent pixels.
    fn from_tile(key: Option<u64>, t: graftdb::Tile) -> Option<Self> {
        match t.pixels {
            PixelRef::File { path, window } => Some(StoredTile { key, footprint: t.footprint, gsd_m: t.gsd_m, time: t.time, cloud: t.cloud_cover, path, window }),
            _ => None,
        }
    }
}

type Fp = GeomWithData<rstar::primitives::Rectangle<[f64; 2]>, usize>;

fn point_in_ring(ring: &[[f64; 2]], x: f64, y: f64) -> bool {
    let mut inside = false;
    let n = ring.len();
    if n < 3 {
        return false;
    }
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi) = (ring[i][0], ring[i][1]);
        let (xj, yj) = (ring[j][0], ring[j][1]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Source pixel of `(lon, lat)` inside a stored tile's window, from the footprint corners
/// (TL, TR, BR, BL as ingest writes them), solved as an affine map on TL/TR/BL.
fn source_pixel(t: &StoredTile, lon: f64, lat: f64) -> Option<(f64, f64)> {
    let f = &t.footprint;
    if f.len() < 4 {
        return None;
    }
    let (tl, tr, bl) = (f[0], f[1], f[3]);
    let (ax, ay) = (tr[0] - tl[0], tr[1] - tl[1]);
    let (bx, by) = (bl[0] - tl[0], bl[1] - tl[1]);
    let det = ax * by - ay * bx;
    if det.abs() < 1e-18 {
        return None;
    }
    let (px, py) = (lon - tl[0], lat - tl[1]);
    let u = (px * by - py * bx) / det;
    let v = (ax * py - ay * px) / det;
    Some((t.window[0] as f64 + u * t.window[2] as f64, t.window[1] as f64 + v * t.window[3] as f64))
}

/// Counts of what was dropped, by reason.
type Dropped = BTreeMap<&'static str, u64>;

struct ShardWriter {
    out: PathBuf,
    split: &'static str,
    per_shard: usize,
    n_in_shard: usize,
    names: Vec<String>,
    builder: Option<tar::Builder<BufWriter<File>>>,
}

impl ShardWriter {
    fn new(out: &Path, split: &'static str, per_shard: usize) -> Self {
        ShardWriter { out: out.to_path_buf(), split, per_shard, n_in_shard: 0, names: Vec::new(), builder: None }
    }

    fn add(&mut self, members: &[(String, Vec<u8>)]) -> Result<()> {
        if self.builder.is_none() || self.n_in_shard >= self.per_shard {
            self.finish_current()?;
            let name = format!("{}-{:06}.tar", self.split, self.names.len());
            let f = File::create(self.out.join(&name)).with_context(|| format!("creating {name}"))?;
            self.builder = Some(tar::Builder::new(BufWriter::new(f)));
            self.names.push(name);
            self.n_in_shard = 0;
        }
        let b = self.builder.as_mut().expect("opened above");
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_path(name)?;
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, data.as_slice())?;
        }
        self.n_in_shard += 1;
        Ok(())
    }

    fn finish_current(&mut self) -> Result<()> {
        if let Some(b) = self.builder.take() {
            let mut w = b.into_inner()?;
            w.flush()?;
        }
        Ok(())
    }
}

/// `.npy` v1.0 bytes of a row-major float32 `[rows, cols]` array.
pub fn npy_f32(rows: usize, cols: usize, data: &[f32]) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + len (2) + header + '\n' padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Build the dataset; returns the manifest (also written to `out/manifest.json`).
pub fn build(db_dir: &Path, out: &Path, o: &BuildOptions) -> Result<Value> {
    let db = Db::open_read_only(db_dir)?;
    let dim = match &o.space {
        Some(s) => db.space(s)?.dim as usize,
        None => 0,
    };

    // 1. Photos and stored tiles.
    let mut photos: Vec<(PhotoRow, PhotoPt)> = Vec::new();
    let mut stored: Vec<StoredTile> = Vec::new();
    db.for_each_record(|key, rec| {
        match rec {
            Record::Photo(p) => photos.push((
                PhotoRow { key, id: p.id, time: p.time, license: p.license },
                PhotoPt { lon: p.lon, lat: p.lat, time: p.time },
            )),
            Record::Tile(t) => stored.extend(StoredTile::from_tile(Some(key), t)),
        }
        Ok(())
    })?;
    // Rasters outside the database: the same tiling as `graftdb ingest raster`, in memory.
    for path in &o.rasters {
        let report = tile_raster(path, &RasterOptions::default()).with_context(|| format!("--raster {}", path.display()))?;
        stored.extend(report.tiles.into_iter().filter_map(|t| StoredTile::from_tile(None, t)));
    }
    // Deterministic input order: by photo id (then key for equal ids).
    photos.sort_by(|a, b| a.0.id.cmp(&b.0.id).then(a.0.key.cmp(&b.0.key)));
    let pts: Vec<PhotoPt> = photos.iter().map(|p| p.1).collect();
    let rows: Vec<PhotoRow> = photos.into_iter().map(|p| p.0).collect();

    let mut tree_items = Vec::new();
    for (i, t) in stored.iter().enumerate() {
        let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
        for c in &t.footprint {
            for k in 0..2 {
                lo[k] = lo[k].min(c[k]);
                hi[k] = hi[k].max(c[k]);
            }
        }
        if lo[0].is_finite() && hi[0].is_finite() {
            tree_items.push(Fp::new(rstar::primitives::Rectangle::from_corners(lo, hi), i));
        }
    }
    let tile_tree = RTree::bulk_load(tree_items);

    // 2. The GRAFT rule.
    let a = assign::assign(&pts, assign::Params { tile_px: o.tile_px, gsd_m: o.gsd, max_photos: o.max_photos });
    let mut dropped: Dropped = BTreeMap::new();
    let mut photo_drops: Dropped = BTreeMap::new();
    photo_drops.insert("over the cap", a.over_cap as u64);
    photo_drops.insert("bad coordinate", a.bad_coord as u64);

    // 3. Split by blocks of candidate tiles (in assignment order).
    let n_blocks = a.tiles.len().div_ceil(o.block);
    let is_test = test_blocks(n_blocks, o.test_fraction, o.seed);

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut writers = [ShardWriter::new(out, "train", o.shard_size), ShardWriter::new(out, "test", o.shard_size)];
    let mut counts: BTreeMap<&str, [u64; 2]> = BTreeMap::new(); // split -> [tiles, photos]
    counts.insert("train", [0, 0]);
    counts.insert("test", [0, 0]);
    let mut readers: HashMap<String, WindowReader> = HashMap::new();
    let mut bad_rasters: HashMap<String, String> = HashMap::new();

    for (ti, t) in a.tiles.iter().enumerate() {
        let split_i = usize::from(is_test[ti / o.block]);
        let split = if split_i == 1 { "test" } else { "train" };

        // Photos with vectors.
        let mut kept: Vec<(usize, [u32; 2])> = Vec::with_capacity(t.photos.len());
        let mut vecs: Vec<f32> = Vec::new();
        for &(i, off) in &t.photos {
            if let Some(space) = &o.space {
                match db.vector(space, rows[i].key)? {
                    Some(v) if v.len() == dim => {
                        vecs.extend_from_slice(&v);
                    }
                    _ => {
                        *photo_drops.entry("no vector").or_default() += 1;
                        continue;
                    }
                }
            }
            kept.push((i, off));
        }
        if kept.is_empty() {
            *dropped.entry("no photo with a vector").or_default() += 1;
            continue;
        }

        // Tile date: median of the kept photos' times (lower median).
        let mut times: Vec<i64> = kept.iter().filter_map(|(i, _)| rows[*i].time).collect();
        times.sort_unstable();
        let date = if times.is_empty() { None } else { Some(times[(times.len() - 1) / 2]) };

        // Raster: a stored tile at this GSD whose footprint holds the centre; closest in time
        // to the tile date, then least cloud, then database tiles (lowest key) before `--raster`
        // ones (by path and window).
        let env = AABB::from_point([t.lon, t.lat]);
        let mut cands: Vec<&StoredTile> = tile_tree
            .locate_in_envelope_intersecting(&env)
            .map(|g| &stored[g.data])
            .filter(|s| (s.gsd_m - o.gsd).abs() <= 0.05 * o.gsd && point_in_ring(&s.footprint, t.lon, t.lat))
            .collect();
        cands.sort_by(|x, y| {
            let dt = |s: &StoredTile| match (s.time, date) {
                (Some(a), Some(b)) => (a - b).unsigned_abs(),
                _ => u64::MAX,
            };
            dt(x)
                .cmp(&dt(y))
                .then(x.cloud.unwrap_or(f32::MAX).total_cmp(&y.cloud.unwrap_or(f32::MAX)))
                .then(x.key.is_none().cmp(&y.key.is_none()))
                .then(x.key.cmp(&y.key))
                .then(x.path.cmp(&y.path))
                .then(x.window.cmp(&y.window))
        });
        let mut png: Option<(Vec<u8>, &StoredTile)> = None;
        for s in cands {
            if bad_rasters.contains_key(&s.path) {
                continue;
            }
            let Some((px, py)) = source_pixel(s, t.lon, t.lat) else { continue };
            let half = (o.tile_px / 2) as f64;
            let (x0, y0) = ((px - half).round(), (py - half).round());
            if x0 < 0.0 || y0 < 0.0 {
                continue;
            }
            let win = [x0 as u32, y0 as u32, o.tile_px, o.tile_px];
            if !readers.contains_key(&s.path) {
                match WindowReader::open(Path::new(&s.path)) {
                    Ok(r) => {
                        readers.insert(s.path.clone(), r);
                    }
                    Err(e) => {
                        bad_rasters.insert(s.path.clone(), e.to_string());
                        continue;
                    }
                }
            }
            let reader = readers.get_mut(&s.path).expect("inserted above");
            match reader.read(win) {
                Ok(img) => {
                    let mut bytes = Vec::new();
                    image::DynamicImage::ImageRgb8(img)
                        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
                        .context("encoding a tile PNG")?;
                    png = Some((bytes, s));
                    break;
                }
                Err(_) => continue, // window off the raster's edge
            }
        }
        let Some((png, src)) = png else {
            *dropped.entry("no raster coverage").or_default() += 1;
            *photo_drops.entry("tile dropped").or_default() += kept.len() as u64;
            continue;
        };

        let key = format!("{ti:08}");
        let photos_json: Vec<Value> = kept
            .iter()
            .map(|(i, off)| {
                let r = &rows[*i];
                json!({
                    "id": r.id.to_json(),
                    "offset": [off[0], off[1]],
                    "date": r.time.map(iso),
                    "license": r.license,
                })
            })
            .collect();
        let meta = tile_json(t, &rows, split, date, o, &photos_json, src);
        let npy = npy_f32(kept.len(), dim, &vecs);
        writers[split_i].add(&[
            (format!("{key}.json"), serde_json::to_vec(&meta)?),
            (format!("{key}.npy"), npy),
            (format!("{key}.png"), png),
        ])?;
        let c = counts.get_mut(split).expect("both splits present");
        c[0] += 1;
        c[1] += kept.len() as u64;
    }
    for w in &mut writers {
        w.finish_current()?;
    }
    if let Some((p, e)) = bad_rasters.iter().next() {
        eprintln!("warning: {} raster(s) could not be opened, e.g. {p}: {e}", bad_rasters.len());
    }

    let manifest = json!({
        "format": FORMAT,
        "shards": {"train": writers[0].names, "test": writers[1].names},
        "counts": {
            "photos_in_db": rows.len(),
            "photos_without_time": a.no_time,
            "candidate_tiles": a.tiles.len(),
            "blocks": n_blocks,
            "test_blocks": is_test.iter().filter(|b| **b).count(),
            "train": {"tiles": counts["train"][0], "photos": counts["train"][1]},
            "test": {"tiles": counts["test"][0], "photos": counts["test"][1]},
        },
        "dropped": {"tiles": dropped, "photos": photo_drops},
        "tile_px": o.tile_px,
        "gsd": o.gsd,
        "max_photos": o.max_photos,
        "test_fraction": o.test_fraction,
        "block": o.block,
        "seed": o.seed,
        "space": o.space,
        "embedding_dim": dim,
    });
    let mut f = File::create(out.join("manifest.json"))?;
    f.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
    f.write_all(b"\n")?;
    if a.tiles.is_empty() && !rows.is_empty() {
        bail!("no tile was formed from {} photos", rows.len());
    }
    Ok(manifest)
}

fn tile_json(
    t: &TileAssign,
    rows: &[PhotoRow],
    split: &str,
    date: Option<i64>,
    o: &BuildOptions,
    photos: &[Value],
    src: &StoredTile,
) -> Value {
    let quarter = match t.bin.quarter {
        assign::Quarter::None => Value::from("none"),
        assign::Quarter::Q(y, q) => Value::from(format!("{y}Q{}", q + 1)),
    };
    json!({
        "tile_id": format!("{}@{}m", rows[t.centre].id, o.gsd),
        "centre": [t.lon, t.lat],
        "bbox": t.bbox(),
        "date": date.map(iso),
        "split": split,
        "bin": {"cell": [t.bin.cx, t.bin.cy], "quarter": quarter},
        "tile_px": o.tile_px,
        "gsd": o.gsd,
        "source": {"tile_key": src.key, "path": src.path},
        "photos": photos,
    })
}

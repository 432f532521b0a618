//! Whole-database operations: the photo→tile spatial join, statistics, the integrity check,
//! and iteration over all records (for export).

use std::collections::HashSet;

use redb::{ReadableTable, ReadableTableMetadata};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::RTree;

use crate::db::{Db, INDEX_DIR};
use crate::geo::Region;
use crate::store::{codec, IDS, RECORDS, VECTOR_CHUNKS};
use crate::{Error, Kind, Level, Record, Result, SpaceDef};

/// One pair of the spatial join.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinPair {
    /// The photo.
    pub photo: Record,
    /// Photo key.
    pub photo_key: u64,
    /// The tile whose footprint holds the photo (boundary included).
    pub tile: Record,
    /// Tile key.
    pub tile_key: u64,
}

/// Totals of a join.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinStats {
    /// Tiles indexed.
    pub tiles: u64,
    /// Photos probed.
    pub photos: u64,
    /// Pairs emitted.
    pub pairs: u64,
    /// Photos in no tile.
    pub unmatched_photos: u64,
}

/// Statistics of a database.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DbStats {
    /// Tiles stored.
    pub tiles: u64,
    /// Photos stored.
    pub photos: u64,
    /// Per space.
    pub spaces: Vec<SpaceStats>,
    /// Bytes of the redb file.
    pub redb_bytes: u64,
    /// Bytes of derived index files.
    pub index_bytes: u64,
    /// Disk bytes per record (all files / records).
    pub bytes_per_record: f64,
    /// `[west, south, east, north]` of all records (tile footprints included); `None` when empty.
    pub extent: Option<[f64; 4]>,
}

/// Statistics of one space.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpaceStats {
    /// Name.
    pub name: String,
    /// Dimension.
    pub dim: u32,
    /// Metric.
    pub metric: String,
    /// `image` or `patch RxC`.
    pub level: String,
    /// Vectors (or grids) stored.
    pub vectors: u64,
    /// Rows in the snapshot.
    pub snapshot_rows: u64,
    /// Rows in the in-memory delta.
    pub delta_rows: u64,
    /// Whether a graph is loaded.
    pub graph: bool,
    /// Cone partitions loaded (0: none; see `index::parts`).
    pub partitions: u64,
    /// Bytes one stored vector or grid costs in redb: its chunk entry (8-byte key + 48-byte
    /// header + payload).
    pub value_bytes: u64,
}

/// What `check` compares a space's rows with, from each record: kind, time, bounds, and the
/// value of the snapshots' id column (`db::column_id`).
type RecordFacts = (Kind, Option<i64>, [f64; 4], i64);

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p).map_or(0, |rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
}

impl Db {
    /// Every record, in key order (geohash order).
    pub fn for_each_record(&self, mut f: impl FnMut(u64, Record) -> Result<()>) -> Result<()> {
        let r = self.redb().begin_read()?;
        let t = r.open_table(RECORDS)?;
        for e in t.iter()? {
            let (k, v) = e?;
            f(k.value(), codec::decode_record(v.value())?)?;
        }
        Ok(())
    }

    /// Records of `kind` (or any) whose bounding box meets `bbox` (`[w, s, e, n]`, `w <= e`),
    /// in key order, at most `limit`. Records are keyed by their centre, so the key ranges
    /// searched are those of `bbox` widened by the largest tile half-extent any space has
    /// seen (0.5° when no space holds tiles yet). Returns whether the limit cut the list short.
    pub fn records_in(&self, bbox: [f64; 4], kind: Option<Kind>, limit: usize, mut f: impl FnMut(u64, Record) -> Result<()>) -> Result<bool> {
        let [w, s, e, n] = bbox;
        let mut margin = 0f64;
        for def in self.spaces()? {
            let h = self.space_state(&def.name)?;
            margin = margin.max(h.state.read().map_err(|_| Error::Index("lock poisoned".into()))?.max_half_extent);
        }
        if margin == 0.0 {
            margin = 0.5;
        }
        let wide = [(w - margin).max(-180.0), (s - margin).max(-90.0), (e + margin).min(180.0), (n + margin).min(90.0)];
        let r = self.redb().begin_read()?;
        let t = r.open_table(RECORDS)?;
        let mut found = 0usize;
        for (lo, hi) in crate::geo::hash::cover_bbox(wide, 64, 40) {
            for entry in t.range(lo..=hi)? {
                let (k, v) = entry?;
                let rec = codec::decode_record(v.value())?;
                let b = rec.bbox();
                if kind.is_some_and(|x| x != rec.kind()) || b[0] > e || b[2] < w || b[1] > n || b[3] < s {
                    continue;
                }
                if found == limit {
                    return Ok(true);
                }
                found += 1;
                f(k.value(), rec)?;
            }
        }
        Ok(false)
    }

    /// Which photos fall in which tiles: an R-tree over tile footprints' boxes, then the
    /// exact point-in-footprint test (boundary included). Pairs come in photo key order.
    pub fn join(&self, mut f: impl FnMut(JoinPair) -> Result<()>) -> Result<JoinStats> {
        let mut tiles: Vec<(u64, Record, Region)> = Vec::new();
        let mut boxes = Vec::new();
        self.for_each_record(|k, rec| {
            if let Record::Tile(t) = &rec {
                let b = rec.bbox();
                let ring = t.footprint.iter().map(|[x, y]| format!("{x} {y}")).collect::<Vec<_>>().join(",");
                let region = Region::parse_polygon(&format!("tile {}", t.id), &format!("POLYGON(({ring}))"))?;
                boxes.push(GeomWithData::new(Rectangle::from_corners([b[0], b[1]], [b[2], b[3]]), tiles.len()));
                tiles.push((k, rec, region));
            }
            Ok(())
        })?;
        let tree = RTree::bulk_load(boxes);
        let mut st = JoinStats { tiles: tiles.len() as u64, ..Default::default() };
        self.for_each_record(|k, rec| {
            if let Record::Photo(p) = &rec {
                st.photos += 1;
                let mut any = false;
                for g in tree.locate_all_at_point(&[p.lon, p.lat]) {
                    if let Some((tk, tile, region)) = tiles.get(g.data) {
                        if region.contains_point(p.lon, p.lat) {
                            any = true;
                            st.pairs += 1;
                            f(JoinPair { photo: rec.clone(), photo_key: k, tile: tile.clone(), tile_key: *tk })?;
                        }
                    }
                }
                if !any {
                    st.unmatched_photos += 1;
                }
            }
            Ok(())
        })?;
        Ok(st)
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<DbStats> {
        let (mut tiles, mut photos) = (0u64, 0u64);
        let mut extent: Option<[f64; 4]> = None;
        self.for_each_record(|_, r| {
            let b = r.bbox();
            extent = Some(extent.map_or(b, |e| [e[0].min(b[0]), e[1].min(b[1]), e[2].max(b[2]), e[3].max(b[3])]));
            match r.kind() {
                Kind::Tile => tiles += 1,
                Kind::Photo => photos += 1,
            }
            Ok(())
        })?;
        let r = self.redb().begin_read()?;
        let vt = r.open_table(VECTOR_CHUNKS)?;
        let mut spaces = Vec::new();
        for def in self.spaces()? {
            let entry = (codec::CHUNK_ENTRY_HEAD + crate::db::payload_bytes(&def)) as u64;
            let mut n = 0u64;
            for e in vt.range((def.number, 0)..=(def.number, u64::MAX))? {
                n += e?.1.value().len() as u64 / entry;
            }
            let h = self.space_state(&def.name)?;
            let s = h.state.read().map_err(|_| Error::Index("lock poisoned".into()))?;
            let payload = crate::db::payload_bytes(&def) as u64;
            spaces.push(SpaceStats {
                name: def.name.clone(),
                dim: def.dim,
                metric: def.metric.as_str().into(),
                level: match def.level {
                    Level::Image => "image".into(),
                    Level::Patch { rows, cols } => format!("patch {rows}x{cols}"),
                },
                vectors: n,
                snapshot_rows: s.base.len() as u64,
                delta_rows: s.delta.len() as u64,
                graph: s.hnsw.is_some(),
                partitions: s.parts.as_ref().map_or(0, |p| p.len() as u64),
                value_bytes: payload + codec::CHUNK_ENTRY_HEAD as u64,
            });
        }
        let redb_bytes = std::fs::metadata(self.path().join(crate::db::REDB_FILE)).map_or(0, |m| m.len());
        let index_bytes = dir_size(&self.path().join(INDEX_DIR));
        let total = tiles + photos;
        Ok(DbStats {
            tiles,
            photos,
            spaces,
            redb_bytes,
            index_bytes,
            bytes_per_record: if total == 0 { 0.0 } else { (redb_bytes + index_bytes) as f64 / total as f64 },
            extent,
        })
    }

    /// Check redb, the vector arenas, the graphs and an R-tree of all records against each
    /// other. Returns the problems found (empty when healthy).
    pub fn check(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let r = self.redb().begin_read()?;
        let recs = r.open_table(RECORDS)?;
        let ids = r.open_table(IDS)?;
        let vt = r.open_table(VECTOR_CHUNKS)?;
        // Records and ids agree both ways; an R-tree over all records finds each at its box.
        let mut entries = Vec::new();
        let mut metas = std::collections::HashMap::new();
        for e in recs.iter()? {
            let (k, v) = e?;
            let k = k.value();
            match codec::decode_record(v.value()) {
                Ok(rec) => {
                    let b = rec.bbox();
                    if !b.iter().all(|x| x.is_finite()) {
                        problems.push(format!("record key {k}: non-finite bounds"));
                        continue;
                    }
                    match ids.get(codec::id_key(rec.kind(), rec.id()).as_slice())? {
                        Some(x) if x.value() == k => {}
                        _ => problems.push(format!("record {} (key {k}) has no matching id entry", rec.id())),
                    }
                    entries.push(GeomWithData::new(Rectangle::from_corners([b[0], b[1]], [b[2], b[3]]), k));
                    metas.insert(k, (rec.kind(), rec.time(), b, crate::db::column_id(&rec)));
                }
                Err(e) => problems.push(format!("record key {k}: {e}")),
            }
        }
        if ids.len()? != recs.len()? {
            problems.push(format!("{} ids but {} records", ids.len()?, recs.len()?));
        }
        let tree = RTree::bulk_load(entries);
        for (k, (_, _, b, _)) in &metas {
            let found = tree.locate_all_at_point(&[b[0], b[1]]).any(|g| g.data == *k);
            if !found {
                problems.push(format!("R-tree does not find key {k} at its position"));
            }
        }
        if tree.size() != metas.len() {
            problems.push(format!("R-tree holds {} of {} records", tree.size(), metas.len()));
        }
        for def in self.spaces()? {
            problems.extend(self.check_space(&def, &vt, &metas)?);
        }
        Ok(problems)
    }

    fn check_space(
        &self,
        def: &SpaceDef,
        vt: &redb::ReadOnlyTable<(u16, u64), &'static [u8]>,
        metas: &std::collections::HashMap<u64, RecordFacts>,
    ) -> Result<Vec<String>> {
        let mut p = Vec::new();
        let num = def.number;
        let payload_len = crate::db::payload_bytes(def);
        let mut stored: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut seen = HashSet::new();
        // Chunks hold sequences 1, 2, 3, … without gaps or overlaps, each key once.
        let mut expect = 1u64;
        for e in vt.range((num, 0)..=(num, u64::MAX))? {
            let (k, v) = e?;
            let last = k.value().1;
            let rows = match crate::db::chunk_rows(last, v.value(), payload_len) {
                Ok(rows) => rows,
                Err(e) => {
                    p.push(format!("space {}: vector chunk ending at sequence {last}: {e}", def.name));
                    continue;
                }
            };
            for (seq, key, entry) in rows {
                if seq != expect {
                    p.push(format!("space {}: vector sequence {seq} follows {} (chunk ending at {last})", def.name, expect - 1));
                }
                expect = seq + 1;
                if !seen.insert(key) {
                    p.push(format!("space {}: key {key} has more than one vector (again at sequence {seq})", def.name));
                }
                match codec::decode_vector_value(entry) {
                    Ok((m, payload)) => {
                        match metas.get(&key) {
                            None => p.push(format!("space {}: vector for missing record key {key}", def.name)),
                            Some((kind, time, b, _)) => {
                                if *kind != m.kind || *time != m.time || *b != m.bbox {
                                    p.push(format!("space {}: vector header of key {key} disagrees with its record", def.name));
                                }
                            }
                        }
                        stored.push((key, payload.to_vec()));
                    }
                    Err(e) => p.push(format!("space {}: key {key} (sequence {seq}): {e}", def.name)),
                }
            }
        }
        let h = self.space_state(&def.name)?;
        let s = h.state.read().map_err(|_| Error::Index("lock poisoned".into()))?;
        let rows = s.base.len() + s.delta.len();
        if rows != stored.len() {
            p.push(format!("space {}: index holds {rows} rows, redb {} vectors", def.name, stored.len()));
        }
        let patch = matches!(def.level, Level::Patch { .. });
        let mut codes = Vec::new();
        for (key, payload) in &stored {
            let found = [&s.base, &s.delta].into_iter().find_map(|seg| seg.find(*key).map(|i| (seg, i)));
            match found {
                None => p.push(format!("space {}: key {key} missing from the index", def.name)),
                Some((seg, i)) => {
                    let same = if patch { seg.grid(i) == payload.as_slice() } else { bytemuck::cast_slice::<f32, u8>(seg.vector(i)) == payload.as_slice() };
                    if !same {
                        p.push(format!("space {}: key {key}: index vector differs from redb", def.name));
                    } else if !patch {
                        // The exact scan's error bound trusts the codes, scale and residual
                        // norm: they must be what quantising the vector gives.
                        codes.clear();
                        let (scale, rho) = crate::index::scan::quantise(seg.vector(i), &mut codes);
                        if seg.coded(i) != Some((&codes[..], scale, rho)) {
                            p.push(format!("space {}: key {key}: index codes do not match its vector", def.name));
                        }
                    }
                }
            }
        }
        if patch && !s.base.sketch.is_empty() {
            // The tile scan skips what the sketches and tile summaries rule out: they must be
            // what the snapshot's grids give.
            let (per, dim) = (crate::db::per(def), def.dim as usize);
            let bad = (0..s.base.len()).find(|&i| crate::index::sketch::build(s.base.grid(i), 1, per, dim, 1) != s.base.sketches(i));
            if let Some(i) = bad {
                p.push(format!("space {}: the patch sketches of row {i} (key {}) do not match its grid", def.name, s.base.keys.get(i).copied().unwrap_or(0)));
            }
        }
        if !patch && !s.base.sketch.is_empty() {
            // The exact scan skips rows whose sketch bound is below the k-th score.
            let dim = def.dim as usize;
            let bad = (0..s.base.len()).find(|&i| match s.base.coded(i) {
                Some((c, sc, _)) => crate::index::sketch::build_rows(c, &[sc], 1, dim, 1) != s.base.sketches(i),
                None => true,
            });
            if let Some(i) = bad {
                p.push(format!("space {}: the sketch of row {i} (key {}) does not match its codes", def.name, s.base.keys.get(i).copied().unwrap_or(0)));
            }
        }
        if !patch && !s.base.ids.is_empty() {
            // Hits on the snapshot's rows take their ids from this column, not their records.
            let bad = (0..s.base.len()).find(|&i| s.base.keys.get(i).and_then(|k| metas.get(k)).map(|m| m.3) != s.base.ids.get(i).copied());
            if let Some(i) = bad {
                p.push(format!("space {}: the record id of row {i} (key {}) does not match its record", def.name, s.base.keys.get(i).copied().unwrap_or(0)));
            }
        }
        if let Some(g) = &s.hnsw {
            // Graph nodes are labelled by snapshot row number, or `row × per + patch` for the
            // patches of a patch-level space (`hnsw::labels`).
            let per = crate::db::per(def);
            if g.size() != s.base.len() * per {
                p.push(format!("space {}: graph holds {} vectors, snapshot {} × {per}", def.name, g.size(), s.base.len()));
            }
            if let Some(item) = (0..s.base.len() * per).find(|&i| !g.contains(i as u64)) {
                let (row, patch) = (item / per, item % per);
                let what = if per == 1 { format!("row {row}") } else { format!("patch {patch} of row {row}") };
                p.push(format!("space {}: graph lacks {what} (key {})", def.name, s.base.keys.get(row).copied().unwrap_or(0)));
            }
        }
        if let Some(parts) = &s.parts {
            // The partitions' copy must name the snapshot's rows with their keys, codes and
            // filter fields (the file's own checks already made the rows a permutation).
            let per = parts.per().max(1);
            let bad = (0..parts.rows_total()).find(|&j| {
                let Some(it) = parts.row(j).map(|r| r as usize) else { return true };
                let r = it / per;
                parts.key(j) != s.base.keys.get(r).copied() || parts.coded(j) != s.base.item_coded(it, per, def.dim as usize) || parts.metas().get(j) != s.base.meta(r)
            });
            if let Some(j) = bad {
                p.push(format!("space {}: partition position {j} disagrees with the snapshot", def.name));
            }
        }
        Ok(p)
    }
}

//! The vector store (format version 2): a commit's vectors are all there after reopen, a
//! transaction that is dropped or aborted leaves nothing, duplicate vectors are refused, and a
//! format-version-1 database (built here by hand, table by table) is upgraded on open.

use graftdb::store::codec;
#[path = "support/index_files.rs"]
mod index_files;

use graftdb::{Db, Error, Filter, Hit, Kind, Level, Metric, Photo, PixelRef, Query, Record, RecordId, Region, SpaceDef, Tile};
use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition, TableHandle};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CHUNKS: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("vector_chunks");

fn photo(i: usize) -> Record {
    // Spread over a few degrees so keys fall in many geohash cells, some shared.
    let (lon, lat) = (10.0 + (i * 7919 % 400) as f64 * 0.01, 40.0 + (i * 104_729 % 300) as f64 * 0.01);
    Record::Photo(Photo { id: RecordId::Int(i as i64), lon, lat, accuracy: None, time: Some(i as i64 * 1_000_000), source: "t".into(), license: None, url: None, user: None })
}

fn tile(i: usize) -> Tile {
    let (lon, lat, h) = (20.0 + i as f64 * 0.1, 30.0, 0.01);
    Tile {
        id: RecordId::Str(format!("t{i}")),
        footprint: vec![[lon - h, lat + h], [lon + h, lat + h], [lon + h, lat - h], [lon - h, lat - h], [lon - h, lat + h]],
        source: "test".into(),
        gsd_m: 10.0,
        time: None,
        cloud_cover: None,
        pixels: PixelRef::None,
    }
}

/// A deterministic vector, already unit length (so a cosine space stores it as given, bit for bit
/// up to the normalisation's rounding, which the comparisons allow for).
fn vector(i: usize, dim: usize) -> Vec<f32> {
    let h = |d: usize| {
        // splitmix64 of (i, d): distinct records get unrelated vectors.
        let mut z = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (d as u64).wrapping_add(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % 2001) as f32 / 1000.0 - 1.0 + 0.0005
    };
    let mut v: Vec<f32> = (0..dim).map(h).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

fn format_version(dir: &std::path::Path) -> u32 {
    let r = redb::Database::builder().set_concurrency_mode(redb::ConcurrencyMode::MultiWriter).open(dir.join("graftdb.redb")).unwrap();
    let t = r.begin_read().unwrap().open_table(META).unwrap().get("format_version").unwrap().unwrap().value().to_vec();
    u32::from_le_bytes(t.try_into().unwrap())
}

fn vectors_in(db: &Db, space: &str) -> u64 {
    db.stats().unwrap().spaces.iter().find(|s| s.name == space).map_or(0, |s| s.vectors)
}

/// 1,000 rows at dim 1024 (4,152-byte entries, 250 to a chunk) make several chunks in one
/// commit, with a partial last one; `put_vector` adds more after `insert_batch` in the same
/// transaction. Everything committed is there after reopen, read-write and read-only, and a
/// dropped and an aborted transaction leave nothing — also not a gap in the sequence numbers.
#[test]
fn committed_vectors_survive_reopen_and_uncommitted_leave_nothing() {
    const DIM: usize = 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut expect: Vec<(RecordId, Vec<f32>)> = Vec::new();
    {
        let db = Db::create(&path).unwrap();
        db.create_space("s", DIM as u32, Metric::Cos, Level::Image).unwrap();
        let mut w = db.begin_write().unwrap();
        let rows: Vec<(Record, Vec<f32>)> = (0..1000).map(|i| (photo(i), vector(i, DIM))).collect();
        w.insert_batch("batch", 1, "s", &rows).unwrap();
        for i in 1000..1010 {
            let key = w.insert(photo(i)).unwrap();
            w.put_vector("s", key, &vector(i, DIM)).unwrap();
        }
        w.commit().unwrap();
        expect.extend((0..1010).map(|i| (RecordId::Int(i as i64), vector(i, DIM))));

        // Dropped without commit.
        let mut w = db.begin_write().unwrap();
        let rows: Vec<(Record, Vec<f32>)> = (2000..2600).map(|i| (photo(i), vector(i, DIM))).collect();
        w.insert_batch("dropped", 1, "s", &rows).unwrap();
        drop(w);
        // Aborted.
        let mut w = db.begin_write().unwrap();
        let rows: Vec<(Record, Vec<f32>)> = (3000..3300).map(|i| (photo(i), vector(i, DIM))).collect();
        w.insert_batch("aborted", 1, "s", &rows).unwrap();
        w.abort().unwrap();
        assert_eq!(vectors_in(&db, "s"), 1010);

        // A later commit continues the sequence where the last commit ended.
        let mut w = db.begin_write().unwrap();
        let rows: Vec<(Record, Vec<f32>)> = (4000..4300).map(|i| (photo(i), vector(i, DIM))).collect();
        w.insert_batch("later", 1, "s", &rows).unwrap();
        w.commit().unwrap();
        expect.extend((4000..4300).map(|i| (RecordId::Int(i as i64), vector(i, DIM))));
        assert_eq!(db.check().unwrap(), Vec::<String>::new());
    }
    // Sequences are dense: the last chunk of space 1 ends at the number of vectors.
    {
        let r = redb::Database::builder().set_concurrency_mode(redb::ConcurrencyMode::MultiWriter).open(path.join("graftdb.redb")).unwrap();
        let rt = r.begin_read().unwrap();
        let t = rt.open_table(CHUNKS).unwrap();
        let last = t.range((1u16, 0u64)..=(1u16, u64::MAX)).unwrap().next_back().unwrap().unwrap().0.value().1;
        assert_eq!(last, 1310);
        assert!(t.len().unwrap() >= 6, "{} chunks for 1,310 vectors of 250 a chunk", t.len().unwrap());
    }
    for read_only in [false, true] {
        let db = if read_only { Db::open_read_only(&path).unwrap() } else { Db::open(&path).unwrap() };
        assert_eq!(vectors_in(&db, "s"), 1310, "read_only {read_only}");
        for (id, v) in &expect {
            let (key, _) = db.get(Some(Kind::Photo), id).unwrap().unwrap_or_else(|| panic!("record {id} lost"));
            let got = db.vector("s", key).unwrap().unwrap_or_else(|| panic!("vector of {id} lost"));
            assert!(close(&got, v), "vector of {id} differs");
        }
        for i in (2000..2600).chain(3000..3300) {
            assert!(db.get(None, &RecordId::Int(i)).unwrap().is_none(), "uncommitted record {i} is visible");
        }
        assert_eq!(db.check().unwrap(), Vec::<String>::new());
    }
}

/// A second vector for the same record and space is refused: within one transaction, and
/// against a committed one (answered from the arena), also after reopen.
#[test]
fn a_second_vector_for_a_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let key = {
        let db = Db::create(&path).unwrap();
        db.create_space("s", 8, Metric::Ip, Level::Image).unwrap();
        let mut w = db.begin_write().unwrap();
        let key = w.insert(photo(1)).unwrap();
        w.put_vector("s", key, &vector(1, 8)).unwrap();
        let e = w.put_vector("s", key, &vector(2, 8)).unwrap_err().to_string();
        assert!(e.contains("already has a vector in space 's'"), "{e}");
        let keys = w.insert_batch("b", 1, "s", &[(photo(2), vector(2, 8))]).unwrap();
        let e = w.put_vector("s", keys[0], &vector(3, 8)).unwrap_err().to_string();
        assert!(e.contains("already has a vector"), "{e}");
        w.commit().unwrap();
        let mut w = db.begin_write().unwrap();
        let e = w.put_vector("s", key, &vector(4, 8)).unwrap_err().to_string();
        assert!(e.contains("already has a vector"), "{e}");
        key
    };
    let db = Db::open(&path).unwrap();
    let mut w = db.begin_write().unwrap();
    assert!(w.put_vector("s", key, &vector(5, 8)).unwrap_err().to_string().contains("already has a vector"));
    drop(w);
    assert!(close(&db.vector("s", key).unwrap().unwrap(), &vector(1, 8)));
}

/// What a format-version-1 database held, written by hand with redb and graftdb's public codecs.
struct V1 {
    photos: Vec<(u64, Vec<f32>)>,
    tiles: Vec<(u64, Vec<f32>)>,
}

const DIM1: usize = 4;

fn write_v1(path: &std::path::Path, dangling_log_entry: bool) -> V1 {
    std::fs::create_dir_all(path.join("index")).unwrap();
    let db = redb::Database::builder().set_concurrency_mode(redb::ConcurrencyMode::MultiWriter).create(path.join("graftdb.redb")).unwrap();
    let spaces: TableDefinition<&str, &[u8]> = TableDefinition::new("spaces");
    let records: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
    let ids: TableDefinition<&[u8], u64> = TableDefinition::new("ids");
    let vectors: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("vectors");
    let log: TableDefinition<(u16, u64), u64> = TableDefinition::new("vector_log");
    let mut out = V1 { photos: vec![], tiles: vec![] };
    let w = db.begin_write().unwrap();
    {
        w.open_table(META).unwrap().insert("format_version", 1u32.to_le_bytes().as_slice()).unwrap();
        let mut sp = w.open_table(spaces).unwrap();
        for def in [
            SpaceDef { name: "img".into(), number: 1, dim: DIM1 as u32, metric: Metric::Cos, level: Level::Image },
            SpaceDef { name: "pat".into(), number: 2, dim: DIM1 as u32, metric: Metric::Ip, level: Level::Patch { rows: 2, cols: 1 } },
        ] {
            sp.insert(def.name.as_str(), bincode::serde::encode_to_vec(&def, bincode::config::standard()).unwrap().as_slice()).unwrap();
        }
        let (mut rt, mut it, mut vt, mut lt) = (w.open_table(records).unwrap(), w.open_table(ids).unwrap(), w.open_table(vectors).unwrap(), w.open_table(log).unwrap());
        let mut seq = [0u64; 3];
        let mut used = std::collections::HashMap::<u64, u64>::new();
        let mut put = |rec: &Record, space: u16, payload: &[u8]| -> u64 {
            let (lon, lat) = rec.point();
            let cell = graftdb::geo::hash::zorder(lon, lat) >> 24;
            let n = used.entry(cell).or_insert(0);
            let key = (cell << 24) | *n;
            *n += 1;
            rt.insert(key, codec::encode_record(rec).unwrap().as_slice()).unwrap();
            it.insert(codec::id_key(rec.kind(), rec.id()).as_slice(), key).unwrap();
            let meta = graftdb::index::arena::RowMeta { kind: rec.kind(), time: rec.time(), bbox: rec.bbox() };
            vt.insert((space, key), codec::encode_vector_value(&meta, payload).as_slice()).unwrap();
            seq[space as usize] += 1;
            lt.insert((space, seq[space as usize]), key).unwrap();
            key
        };
        for i in 0..300 {
            let v = vector(i, DIM1);
            let key = put(&photo(i), 1, &codec::encode_f32(&v));
            out.photos.push((key, v));
        }
        for i in 0..5 {
            let grid: Vec<f32> = (0..2 * DIM1).map(|d| (i * 10 + d) as f32 / 10.0 - 1.0).collect();
            let key = put(&Record::Tile(tile(i)), 2, &codec::encode_patch_grid(&grid, DIM1));
            out.tiles.push((key, grid));
        }
        if dangling_log_entry {
            lt.insert((1u16, 301u64), 12345u64).unwrap();
        }
    }
    w.commit().unwrap();
    out
}

/// A version-1 database opened read-only is upgraded first (through a brief read-write open,
/// as crash repair is), then read: same vectors and grids, `check` clean, the old tables gone,
/// format version 2. A read-write handle then writes on after the migrated sequences.
#[test]
fn version_1_database_is_upgraded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1");
    let v1 = write_v1(&path, false);
    assert_eq!(format_version(&path), 1);
    {
        let db = Db::open_read_only(&path).unwrap();
        assert_eq!(vectors_in(&db, "img"), 300);
        assert_eq!(vectors_in(&db, "pat"), 5);
        for (key, v) in &v1.photos {
            assert!(close(&db.vector("img", *key).unwrap().unwrap(), v), "key {key}");
        }
        for (key, grid) in &v1.tiles {
            let got = db.vector("pat", *key).unwrap().unwrap();
            // The i8 grid written in version 1, dequantised: exactly what was stored.
            let enc = codec::encode_patch_grid(grid, DIM1);
            let want: Vec<f32> = (0..2).flat_map(|p| codec::patch_decode(&enc, DIM1, p).unwrap()).collect();
            assert_eq!(got, want, "key {key}");
            assert!(got.iter().zip(grid).all(|(a, b)| (a - b).abs() < 0.02), "key {key}: {got:?} vs {grid:?}");
        }
        assert_eq!(db.check().unwrap(), Vec::<String>::new());
        let res = db.search(&graftdb::Query::new("img", v1.photos[7].1.clone(), 1)).unwrap();
        assert_eq!(res.hits[0].id, RecordId::Int(7));
    }
    assert_eq!(format_version(&path), 2);
    {
        let r = redb::Database::builder().set_concurrency_mode(redb::ConcurrencyMode::MultiWriter).open(path.join("graftdb.redb")).unwrap();
        let names: Vec<String> = r.begin_read().unwrap().list_tables().unwrap().map(|h| h.name().to_string()).collect();
        assert!(!names.iter().any(|n| n == "vectors" || n == "vector_log"), "{names:?}");
        assert!(names.iter().any(|n| n == "vector_chunks"), "{names:?}");
    }
    let db = Db::open(&path).unwrap();
    let mut w = db.begin_write().unwrap();
    w.insert_batch("more", 1, "img", &[(photo(500), vector(500, DIM1))]).unwrap();
    assert!(w.put_vector("img", v1.photos[0].0, &vector(9, DIM1)).unwrap_err().to_string().contains("already has a vector"));
    w.commit().unwrap();
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(vectors_in(&db, "img"), 301);
    assert_eq!(db.check().unwrap(), Vec::<String>::new());
}

/// A version-1 log entry naming a key with no vector stops the upgrade with `Corrupt`, and the
/// file is left exactly at version 1 (one transaction: nothing or everything).
#[test]
fn a_broken_version_1_database_is_not_half_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1");
    write_v1(&path, true);
    match Db::open(&path) {
        Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("12345") && detail.contains("no vector"), "{detail}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a database whose vector_log names a missing vector"),
    }
    assert_eq!(format_version(&path), 1);
    let r = redb::Database::builder().set_concurrency_mode(redb::ConcurrencyMode::MultiWriter).open(path.join("graftdb.redb")).unwrap();
    let names: Vec<String> = r.begin_read().unwrap().list_tables().unwrap().map(|h| h.name().to_string()).collect();
    assert!(names.iter().any(|n| n == "vectors") && !names.iter().any(|n| n == "vector_chunks"), "{names:?}");
}

/// Searches share one read view until the next commit. A search must see every commit that
/// returned before it began, and never name a record its view lacks, while another thread
/// commits (this is what the view's fallback to a fresh snapshot is for).
#[test]
fn searches_during_commits_see_each_commit_and_only_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(Db::create(dir.path().join("db")).unwrap());
    db.create_space("s", 8, Metric::Cos, Level::Image).unwrap();
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let batches = 40;
    let per = 25;
    let writer = {
        let (db, committed) = (db.clone(), committed.clone());
        std::thread::spawn(move || {
            for b in 0..batches {
                let mut w = db.begin_write().unwrap();
                for i in b * per..(b + 1) * per {
                    let key = w.insert(photo(i)).unwrap();
                    w.put_vector("s", key, &vector(i, 8)).unwrap();
                }
                w.commit().unwrap();
                committed.store((b + 1) * per, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let mut searches = 0;
    loop {
        let before = committed.load(std::sync::atomic::Ordering::SeqCst);
        // k larger than everything: the answer is every record committed so far.
        let res = db.search(&graftdb::Query::new("s", vector(7, 8), 10_000)).unwrap();
        assert!(res.hits.len() >= before, "a search began after {before} records were committed and found {}", res.hits.len());
        assert!(res.hits.len().is_multiple_of(per), "a partial batch is visible: {} records", res.hits.len());
        searches += 1;
        if before == batches * per {
            break;
        }
    }
    writer.join().unwrap();
    assert!(searches > 1);
    // After the last commit every search answers from the shared view, and sees it all.
    for _ in 0..3 {
        assert_eq!(db.search(&graftdb::Query::new("s", vector(3, 8), 10_000)).unwrap().hits.len(), batches * per);
    }
}

/// Hits on a checkpointed snapshot's photo rows are answered from its columns, the record id
/// from the id column (snapshot version 6), instead of from their records (a redb read each).
/// Every field of every hit must be what the records give: photos with integer (also
/// negative) and string ids, with and without a time, and tiles (which read their records);
/// all rows in the delta (records), after a checkpoint (columns), after reopening the mapped
/// snapshot, with a second batch in the delta, and after it is merged in. A wrong id written
/// into the snapshot's column then shows in the hits and in `check`: the hits came from it.
#[test]
fn hits_from_the_id_column_are_the_hits_from_the_records() {
    const DIM: usize = 32;
    let record = |i: usize| -> Record {
        if i.is_multiple_of(11) {
            return Record::Tile(tile(i % 100));
        }
        let Record::Photo(mut p) = photo(i) else { unreachable!() };
        p.id = if i.is_multiple_of(5) { RecordId::Str(format!("p{i}")) } else { RecordId::Int(i as i64 * 3 - 700) };
        if i.is_multiple_of(7) {
            p.time = None;
        }
        Record::Photo(p)
    };
    let rows = |r: std::ops::Range<usize>| -> Vec<(Record, Vec<f32>)> { r.filter(|&i| !i.is_multiple_of(11) || i < 100).map(|i| (record(i), vector(i, DIM))).collect() };
    let filters = [
        Filter::default(),
        Filter { regions: vec![Region::bbox(10.5, 40.5, 13.0, 42.5).unwrap()], ..Default::default() },
        Filter { regions: vec![Region::circle(12.0, 41.5, 80.0).unwrap()], ..Default::default() },
    ];
    let answers = |db: &Db| -> Vec<Vec<Hit>> {
        let mut out = Vec::new();
        for j in 0..6 {
            for f in &filters {
                let r = db.search(&Query::new("s", vector(9_000 + j, DIM), 25).filter(f.clone())).unwrap();
                assert_eq!(r.hits.len(), 25);
                out.push(r.hits);
            }
        }
        out
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let db = Db::create(&path).unwrap();
    db.create_space("s", DIM as u32, Metric::Cos, Level::Image).unwrap();
    let mut w = db.begin_write().unwrap();
    w.insert_batch("first", 1, "s", &rows(0..1_200)).unwrap();
    w.commit().unwrap();
    let from_records = answers(&db);
    assert!(from_records.iter().flatten().any(|h| h.kind == Kind::Tile) && from_records.iter().flatten().any(|h| h.time.is_none()) && from_records.iter().flatten().any(|h| matches!(h.id, RecordId::Str(_))));
    assert!(from_records.iter().flatten().any(|h| h.distance_km.is_some()));
    db.checkpoint().unwrap();
    assert_eq!(answers(&db), from_records, "after the checkpoint");
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(answers(&db), from_records, "from the mapped snapshot");
    let mut w = db.begin_write().unwrap();
    w.insert_batch("second", 1, "s", &rows(1_200..1_500)).unwrap();
    w.commit().unwrap();
    let both = answers(&db);
    db.checkpoint().unwrap();
    assert_eq!(answers(&db), both, "after the merge");
    assert_eq!(db.check().unwrap(), Vec::<String>::new());
    drop(db);
    // The last section of the snapshot is the id column, one i64 a row.
    let arena = index_files::index_files(&path, "arena");
    let mut bytes = std::fs::read(&arena[0]).unwrap();
    assert_eq!((u32::from_le_bytes(bytes[8..12].try_into().unwrap()), bytes[13]), (6, 1), "version 6 with record ids");
    let n = 1_500 - (0..1_500usize).filter(|i| i.is_multiple_of(11) && *i >= 100).count();
    let ids = bytes.len() - n * 8;
    let (row, id) = (0..n).map(|r| (r, i64::from_le_bytes(bytes[ids + 8 * r..ids + 8 * r + 8].try_into().unwrap()))).find(|&(_, id)| id != i64::MIN).unwrap();
    let i = ((id + 700) / 3) as usize;
    assert_eq!(record(i).id(), &RecordId::Int(id), "row {row} holds the id of record {i}");
    bytes[ids + 8 * row..ids + 8 * row + 8].copy_from_slice(&424_242i64.to_le_bytes());
    std::fs::write(&arena[0], &bytes).unwrap();
    let db = Db::open(&path).unwrap();
    let hit = db.search(&Query::new("s", vector(i, DIM), 1)).unwrap().hits.remove(0);
    assert_eq!(hit.id, RecordId::Int(424_242), "the hit on row {row} did not come from the id column");
    let problems = db.check().unwrap();
    assert!(problems.iter().any(|p| p.contains(&format!("record id of row {row}"))), "{problems:?}");
}

//! Reading embeddings from Parquet files written by the Arrow writer, as users' tools
//! (pyarrow, GeoPandas, DuckDB) would write them: every accepted column type, and every
//! kind of bad input, whose error must name the file and the row (counted from 1).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, Float64Builder, ListBuilder};
use arrow_array::{
    ArrayRef, BinaryArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMillisecondArray, TimestampNanosecondArray,
};
use arrow_schema::{Field, Schema};
use graftdb::io::parquet::{ParquetVectorReader, VectorRow};
use graftdb::{Error, RecordId};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

/// Writes `cols` to `dir/name` in row groups of `group` rows, with optional `geo` metadata.
fn write(dir: &Path, name: &str, cols: Vec<(&str, ArrayRef)>, group: usize, geo: Option<&str>) -> PathBuf {
    let path = dir.join(name);
    let fields: Vec<Field> =
        cols.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols.into_iter().map(|(_, a)| a).collect()).unwrap();
    let props = WriterProperties::builder().set_max_row_group_row_count(Some(group)).build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, Some(props)).unwrap();
    if let Some(g) = geo {
        w.append_key_value_metadata(KeyValue::new("geo".into(), g.to_string()));
    }
    w.write(&batch).unwrap();
    w.close().unwrap();
    path
}

fn list_f32(rows: &[Option<Vec<f32>>]) -> ArrayRef {
    let mut b = ListBuilder::new(Float32Builder::new());
    for r in rows {
        match r {
            Some(v) => {
                b.values().append_slice(v);
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

fn fixed_f64(dim: i32, rows: &[Vec<f64>]) -> ArrayRef {
    let mut b = FixedSizeListBuilder::new(Float64Builder::new(), dim);
    for r in rows {
        b.values().append_slice(r);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn f64s(v: &[f64]) -> ArrayRef {
    Arc::new(Float64Array::from(v.to_vec()))
}

fn read_all(path: &Path, max: usize) -> graftdb::Result<Vec<VectorRow>> {
    let mut r = ParquetVectorReader::open(path)?;
    let mut out = Vec::new();
    while let Some(b) = r.next_batch(max)? {
        assert!(!b.is_empty() && b.len() <= max);
        out.extend(b);
    }
    Ok(out)
}

fn err(path: &Path) -> String {
    match read_all(path, 3) {
        Ok(rows) => panic!("{} read {} rows without error", path.display(), rows.len()),
        Err(e) => {
            eprintln!("{e}");
            e.to_string()
        }
    }
}

/// Standard good columns for `n` rows: string ids, dim 3.
fn good(n: usize) -> Vec<(&'static str, ArrayRef)> {
    let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let lon: Vec<f64> = (0..n).map(|i| -10.0 + i as f64).collect();
    let lat: Vec<f64> = (0..n).map(|i| 45.0 - i as f64 * 0.5).collect();
    let emb: Vec<Option<Vec<f32>>> = (0..n).map(|i| Some(vec![i as f32, 1.0, -2.0])).collect();
    vec![
        ("id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("lon", f64s(&lon)),
        ("lat", f64s(&lat)),
        ("embedding", list_f32(&emb)),
    ]
}

fn replace(mut cols: Vec<(&'static str, ArrayRef)>, name: &'static str, a: ArrayRef) -> Vec<(&'static str, ArrayRef)> {
    match cols.iter_mut().find(|(n, _)| *n == name) {
        Some(c) => c.1 = a,
        None => cols.push((name, a)),
    }
    cols
}

#[test]
fn string_ids_variable_lists_across_row_groups_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "good.parquet", good(10), 4, None);
    let mut r = ParquetVectorReader::open(&p).unwrap();
    assert_eq!(r.num_rows(), 10);
    assert_eq!(r.dim(), None, "a variable list has no dimension until a row is read");
    let first = r.next_batch(3).unwrap().unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(r.dim(), Some(3));
    let rows = read_all(&p, 3).unwrap();
    assert_eq!(rows.len(), 10);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.id, RecordId::Str(format!("t{i}")));
        assert_eq!(row.lon, -10.0 + i as f64);
        assert_eq!(row.lat, 45.0 - i as f64 * 0.5);
        assert_eq!(row.embedding, vec![i as f32, 1.0, -2.0]);
        assert_eq!(row.time, None);
        assert_eq!(row.footprint, None);
    }
}

#[test]
fn int_ids_fixed_size_f64_embeddings_f32_coords_and_extra_columns() {
    let dir = tempfile::tempdir().unwrap();
    let cols = vec![
        ("note", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
        ("embedding", fixed_f64(2, &[vec![0.5, 1.5], vec![-1.0, 2.0]])),
        ("id", Arc::new(Int64Array::from(vec![9_007_199_254_740_993, -4])) as ArrayRef),
        ("lat", Arc::new(Float32Array::from(vec![10.5f32, -89.0])) as ArrayRef),
        ("lon", Arc::new(Float32Array::from(vec![179.0f32, -180.0])) as ArrayRef),
    ];
    let p = write(dir.path(), "ints.parquet", cols, 100, None);
    let r = ParquetVectorReader::open(&p).unwrap();
    assert_eq!(r.dim(), Some(2), "a fixed-size list gives the dimension at open");
    let rows = read_all(&p, 100).unwrap();
    assert_eq!(rows[0].id, RecordId::Int(9_007_199_254_740_993));
    assert_eq!(rows[1].id, RecordId::Int(-4));
    assert_eq!((rows[0].lon, rows[0].lat), (179.0, 10.5));
    assert_eq!((rows[1].lon, rows[1].lat), (-180.0, -89.0));
    assert_eq!(rows[0].embedding, vec![0.5, 1.5]);
    assert_eq!(rows[1].embedding, vec![-1.0, 2.0]);

    let cols = replace(good(2), "id", Arc::new(Int32Array::from(vec![7, 8])));
    let p = write(dir.path(), "i32.parquet", cols, 100, None);
    let rows = read_all(&p, 10).unwrap();
    assert_eq!(rows[1].id, RecordId::Int(8));
}

#[test]
fn timestamps_of_any_unit_and_time_strings_become_utc_micros() {
    let dir = tempfile::tempdir().unwrap();
    // 2020-05-18T13:45:00Z = 1589809500 s.
    let secs = 1_589_809_500i64;
    let ts = TimestampMillisecondArray::from(vec![Some(secs * 1000 + 250), None]).with_timezone("+02:00");
    let p = write(dir.path(), "ms.parquet", replace(good(2), "time", Arc::new(ts)), 100, None);
    let rows = read_all(&p, 10).unwrap();
    assert_eq!(rows[0].time, Some(secs * 1_000_000 + 250_000));
    assert_eq!(rows[1].time, None);

    let ts = TimestampNanosecondArray::from(vec![secs * 1_000_000_000 + 1_999, -1]);
    let p = write(dir.path(), "ns.parquet", replace(good(2), "time", Arc::new(ts)), 100, None);
    let rows = read_all(&p, 10).unwrap();
    assert_eq!(rows[0].time, Some(secs * 1_000_000 + 1));
    assert_eq!(rows[1].time, Some(-1), "nanoseconds before the epoch round down");

    let s = StringArray::from(vec![Some("2020-05-18T15:45:00+02:00"), Some("2020-05-18"), None]);
    let p = write(dir.path(), "str.parquet", replace(good(3), "time", Arc::new(s)), 100, None);
    let rows = read_all(&p, 10).unwrap();
    assert_eq!(rows[0].time, Some(secs * 1_000_000));
    assert_eq!(rows[1].time, Some((secs - 13 * 3600 - 45 * 60) * 1_000_000));
    assert_eq!(rows[2].time, None);

    let s = StringArray::from(vec!["2020-05-18", "18/05/2020"]);
    let p = write(dir.path(), "badtime.parquet", replace(good(2), "time", Arc::new(s)), 100, None);
    let e = err(&p);
    assert!(e.contains("badtime.parquet row 2 (1-based):") && e.contains("18/05/2020"), "{e}");
}

/// Little-endian WKB polygon with one ring.
fn wkb_polygon(ring: &[[f64; 2]]) -> Vec<u8> {
    let mut b = vec![1u8];
    b.extend(3u32.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    b.extend((ring.len() as u32).to_le_bytes());
    for [x, y] in ring {
        b.extend(x.to_le_bytes());
        b.extend(y.to_le_bytes());
    }
    b
}

fn wkb_point(x: f64, y: f64) -> Vec<u8> {
    let mut b = vec![1u8];
    b.extend(1u32.to_le_bytes());
    b.extend(x.to_le_bytes());
    b.extend(y.to_le_bytes());
    b
}

fn wkb_linestring() -> Vec<u8> {
    let mut b = vec![1u8];
    b.extend(2u32.to_le_bytes());
    b.extend(2u32.to_le_bytes());
    for v in [0.0f64, 0.0, 1.0, 1.0] {
        b.extend(v.to_le_bytes());
    }
    b
}

#[test]
fn wkb_polygon_gives_closed_footprint_point_gives_none() {
    let dir = tempfile::tempdir().unwrap();
    let closed = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]];
    let open = [[10.0, 10.0], [11.0, 10.0], [11.0, 11.0]];
    let geoms: Vec<Option<Vec<u8>>> =
        vec![Some(wkb_polygon(&closed)), Some(wkb_polygon(&open)), Some(wkb_point(3.0, 4.0)), None];
    let geom = BinaryArray::from(geoms.iter().map(|g| g.as_deref()).collect::<Vec<_>>());
    let p = write(dir.path(), "geom.parquet", replace(good(4), "geometry", Arc::new(geom)), 100, None);
    let rows = read_all(&p, 10).unwrap();
    assert_eq!(rows[0].footprint.as_deref(), Some(&closed[..]));
    assert_eq!(
        rows[1].footprint.as_deref(),
        Some(&[[10.0, 10.0], [11.0, 10.0], [11.0, 11.0], [10.0, 10.0]][..]),
        "an open ring is closed"
    );
    assert_eq!(rows[2].footprint, None);
    assert_eq!(rows[3].footprint, None);

    // GeoParquet metadata naming another primary column is honoured.
    let geom = BinaryArray::from(vec![Some(&wkb_polygon(&closed)[..]), None, None, None]);
    let geo = r#"{"version":"1.1.0","primary_column":"footprint","columns":{"footprint":{"encoding":"WKB","geometry_types":["Polygon"]}}}"#;
    let p = write(dir.path(), "prim.parquet", replace(good(4), "footprint", Arc::new(geom)), 100, Some(geo));
    let rows = read_all(&p, 10).unwrap();
    assert_eq!(rows[0].footprint.as_deref(), Some(&closed[..]));

    // A projected CRS is refused at open.
    let geom = BinaryArray::from(vec![Some(&wkb_polygon(&closed)[..]), None, None, None]);
    let geo = r#"{"version":"1.1.0","primary_column":"geometry","columns":{"geometry":{"encoding":"WKB","geometry_types":[],"crs":{"id":{"authority":"EPSG","code":32618}}}}}"#;
    let p = write(dir.path(), "utm.parquet", replace(good(4), "geometry", Arc::new(geom)), 100, Some(geo));
    let e = ParquetVectorReader::open(&p).unwrap_err().to_string();
    assert!(e.contains("utm.parquet") && e.contains("EPSG:32618"), "{e}");
}

#[test]
fn bad_geometries_name_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let sq = wkb_polygon(&[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("line.parquet", wkb_linestring(), "LineString"),
        ("junk.parquet", vec![1, 3, 0], "not valid WKB"),
        ("far.parquet", wkb_polygon(&[[0.0, 0.0], [200.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), "vertex 2"),
        ("two.parquet", wkb_polygon(&[[0.0, 0.0], [1.0, 1.0]]), "at least 4"),
    ];
    for (name, bad, want) in cases {
        let geom = BinaryArray::from(vec![Some(&sq[..]), Some(&sq[..]), Some(&bad[..])]);
        let p = write(dir.path(), name, replace(good(3), "geometry", Arc::new(geom)), 100, None);
        let e = err(&p);
        assert!(e.contains(&format!("{name} row 3 (1-based):")) && e.contains(want), "{name}: {e}");
    }
}

#[test]
fn bad_values_name_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, &'static str, ArrayRef, &str, &str)> = vec![
        ("lat.parquet", "lat", f64s(&[0.0, 0.0, 0.0, 0.0, 90.5]), "row 5", "lat 90.5 is outside [-90, 90]"),
        ("lon.parquet", "lon", f64s(&[0.0, -180.01, 0.0, 0.0, 0.0]), "row 2", "lon -180.01 is outside"),
        ("nanlon.parquet", "lon", f64s(&[0.0, 0.0, 0.0, f64::NAN, 0.0]), "row 4", "not a finite"),
        ("inflat.parquet", "lat", f64s(&[f64::INFINITY, 0.0, 0.0, 0.0, 0.0]), "row 1", "not a finite"),
        (
            "nullid.parquet",
            "id",
            Arc::new(StringArray::from(vec![Some("a"), Some("b"), Some("c"), Some("d"), None])),
            "row 5",
            "id is null",
        ),
        (
            "nullemb.parquet",
            "embedding",
            list_f32(&[Some(vec![1.0]), Some(vec![1.0]), Some(vec![1.0]), None, Some(vec![1.0])]),
            "row 4",
            "embedding is null",
        ),
        (
            "ragged.parquet",
            "embedding",
            list_f32(&[Some(vec![1.0, 2.0]), Some(vec![1.0, 2.0]), Some(vec![1.0, 2.0]), Some(vec![1.0, 2.0]), Some(vec![1.0])]),
            "row 5",
            "1 values but earlier rows have 2",
        ),
        (
            "nanemb.parquet",
            "embedding",
            list_f32(&[Some(vec![1.0, 2.0]), Some(vec![1.0, f32::NAN]), Some(vec![1.0, 2.0]), Some(vec![1.0, 2.0]), Some(vec![1.0, 2.0])]),
            "row 2",
            "embedding value 2",
        ),
        (
            "infemb.parquet",
            "embedding",
            fixed_f64(1, &[vec![1.0], vec![1.0], vec![1e300], vec![1.0], vec![1.0]]),
            "row 3",
            "embedding value 1",
        ),
    ];
    for (name, col, arr, row, want) in cases {
        let p = write(dir.path(), name, replace(good(5), col, arr), 2, None);
        let e = err(&p);
        assert!(e.contains(&format!("{name} {row} (1-based):")), "{name}: {e}");
        assert!(e.contains(want), "{name}: {e}");
    }
}

#[test]
fn schema_problems_fail_at_open_naming_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut cols = good(2);
    cols.retain(|(n, _)| *n != "embedding");
    cols.push(("emb", list_f32(&[Some(vec![1.0]), Some(vec![2.0])])));
    let p = write(dir.path(), "missing.parquet", cols, 100, None);
    let e = ParquetVectorReader::open(&p).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains("missing.parquet") && e.contains("'embedding'") && e.contains("id, lon, lat, emb"), "{e}");

    let p = write(dir.path(), "strlat.parquet", replace(good(2), "lat", Arc::new(StringArray::from(vec!["1", "2"]))), 100, None);
    let e = ParquetVectorReader::open(&p).unwrap_err().to_string();
    assert!(e.contains("strlat.parquet") && e.contains("column 'lat' has type Utf8"), "{e}");

    let p = write(dir.path(), "fid.parquet", replace(good(2), "id", f64s(&[1.0, 2.0])), 100, None);
    let e = ParquetVectorReader::open(&p).unwrap_err().to_string();
    assert!(e.contains("column 'id' has type Float64"), "{e}");

    let ints: ArrayRef = Arc::new({
        let mut b = ListBuilder::new(arrow_array::builder::Int32Builder::new());
        b.values().append_value(1);
        b.append(true);
        b.values().append_value(2);
        b.append(true);
        b.finish()
    });
    let p = write(dir.path(), "intemb.parquet", replace(good(2), "embedding", ints), 100, None);
    let e = ParquetVectorReader::open(&p).unwrap_err().to_string();
    assert!(e.contains("column 'embedding' has type") && e.contains("float32"), "{e}");

    let p = write(dir.path(), "inttime.parquet", replace(good(2), "time", Arc::new(Int64Array::from(vec![1, 2]))), 100, None);
    let e = ParquetVectorReader::open(&p).unwrap_err().to_string();
    assert!(e.contains("column 'time' has type Int64"), "{e}");

    let p = write(dir.path(), "strgeom.parquet", replace(good(2), "geometry", Arc::new(StringArray::from(vec!["POINT (1 2)", "x"]))), 100, None);
    let e = ParquetVectorReader::open(&p).unwrap_err().to_string();
    assert!(e.contains("column 'geometry' has type Utf8") && e.contains("WKB"), "{e}");
}

#[test]
fn truncated_and_non_parquet_files_are_corrupt_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "whole.parquet", good(50), 10, None);
    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = ParquetVectorReader::open(&cut).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("cut.parquet"), "{e}");

    // Damage the data pages but keep the footer: the error comes from next_batch.
    let mut bad = bytes.clone();
    for b in bad.iter_mut().skip(4).take(bytes.len() / 3) {
        *b = 0xAB;
    }
    let dmg = dir.path().join("damaged.parquet");
    std::fs::write(&dmg, &bad).unwrap();
    let e = read_all(&dmg, 10).unwrap_err();
    assert!(e.to_string().contains("damaged.parquet"), "{e}");

    let txt = dir.path().join("text.parquet");
    std::fs::write(&txt, "id,lon,lat\n1,2,3\n").unwrap();
    let e = ParquetVectorReader::open(&txt).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }) && e.to_string().contains("text.parquet"), "{e}");

    let e = ParquetVectorReader::open(&dir.path().join("absent.parquet")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("absent.parquet"), "{e}");
}

#[test]
fn zero_max_rows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "z.parquet", good(2), 100, None);
    let mut r = ParquetVectorReader::open(&p).unwrap();
    assert!(r.next_batch(0).is_err());
    assert_eq!(r.next_batch(5).unwrap().map(|b| b.len()), Some(2));
    assert!(r.next_batch(5).unwrap().is_none());
}

//! GeoParquet export: what the writer puts in the file, read back with the plain
//! Arrow/Parquet reader as DuckDB or LanceDB would see it.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use graftdb::io::geoparquet::{ExportGeom, ExportRow, GeoParquetWriter};
use graftdb::io::parquet::ParquetVectorReader;
use graftdb::{Kind, RecordId};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn photo(id: i64, lon: f64, lat: f64, v: Option<Vec<f32>>, w: Option<Vec<f32>>) -> ExportRow {
    ExportRow {
        id: RecordId::Int(id),
        kind: Kind::Photo,
        time: Some(1_589_809_500_000_000 + id),
        geometry: ExportGeom::Point(lon, lat),
        space_vectors: vec![v, w],
        extra: serde_json::json!({"source": "flickr", "n": id}),
    }
}

fn tile(id: &str, ring: Vec<[f64; 2]>, v: Option<Vec<f32>>) -> ExportRow {
    ExportRow {
        id: RecordId::Str(id.into()),
        kind: Kind::Tile,
        time: None,
        geometry: ExportGeom::Polygon(ring),
        space_vectors: vec![v, None],
        extra: serde_json::Value::Null,
    }
}

fn spaces() -> Vec<(String, usize)> {
    vec![("clip".into(), 3), ("graft".into(), 2)]
}

#[test]
fn round_trip_keeps_geo_metadata_bbox_vectors_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.parquet");
    let mut w = GeoParquetWriter::create(&path, &spaces()).unwrap();
    w.write_batch(&[
        photo(42, -122.5, 37.75, Some(vec![1.0, 2.0, 3.0]), Some(vec![0.5, -0.5])),
        tile("naip/1", vec![[10.0, 50.0], [11.0, 50.0], [11.0, 51.5], [10.0, 51.5]], Some(vec![-1.0, 0.0, 1.0])),
    ])
    .unwrap();
    w.write_batch(&[photo(-7, 20.0, -33.0, None, Some(vec![9.0, 8.0]))]).unwrap();
    w.write_batch(&[]).unwrap();
    assert!(dir.path().join("export.parquet.partial").exists());
    assert!(!path.exists(), "nothing appears at the final path before finish");
    assert_eq!(w.finish().unwrap(), 3);
    assert!(!dir.path().join("export.parquet.partial").exists());

    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
    let geo = b
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .find(|kv| kv.key == "geo")
        .and_then(|kv| kv.value.clone())
        .unwrap();
    let geo: serde_json::Value = serde_json::from_str(&geo).unwrap();
    assert_eq!(geo["version"], "1.1.0");
    assert_eq!(geo["primary_column"], "geometry");
    let g = &geo["columns"]["geometry"];
    assert_eq!(g["encoding"], "WKB");
    assert_eq!(g["geometry_types"], serde_json::json!(["Point", "Polygon"]));
    assert!(g.get("crs").is_none(), "crs omitted means OGC:CRS84");
    assert_eq!(g["bbox"], serde_json::json!([-122.5, -33.0, 20.0, 51.5]));
    assert_eq!(g["covering"]["bbox"]["xmin"], serde_json::json!(["bbox", "xmin"]));
    assert_eq!(g["covering"]["bbox"]["ymax"], serde_json::json!(["bbox", "ymax"]));

    let schema = b.schema().clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "id_int", "kind", "time", "geometry", "bbox", "emb_clip", "emb_graft", "properties"]);
    assert_eq!(
        schema.field_with_name("time").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    match schema.field_with_name("emb_clip").unwrap().data_type() {
        DataType::FixedSizeList(f, 3) => assert_eq!(f.data_type(), &DataType::Float32),
        t => panic!("emb_clip is {t}"),
    }

    let batches: Vec<RecordBatch> = b.build().unwrap().map(|r| r.unwrap()).collect();
    let batch = arrow_select_concat(&batches);
    assert_eq!(batch.num_rows(), 3);
    let id = batch.column_by_name("id").unwrap().as_string::<i32>();
    let id_int = batch.column_by_name("id_int").unwrap().as_primitive::<Int64Type>();
    assert_eq!((id.value(0), id.value(1), id.value(2)), ("42", "naip/1", "-7"));
    assert_eq!((id_int.value(0), id_int.is_null(1), id_int.value(2)), (42, true, -7));
    let kind = batch.column_by_name("kind").unwrap().as_string::<i32>();
    assert_eq!((kind.value(0), kind.value(1)), ("photo", "tile"));
    let time = batch.column_by_name("time").unwrap().as_primitive::<TimestampMicrosecondType>();
    assert_eq!(time.value(0), 1_589_809_500_000_042);
    assert!(time.is_null(1));

    let bbox = batch.column_by_name("bbox").unwrap().as_struct();
    let col = |n: &str| bbox.column_by_name(n).unwrap().as_primitive::<Float64Type>().clone();
    let (xmin, ymin, xmax, ymax) = (col("xmin"), col("ymin"), col("xmax"), col("ymax"));
    assert_eq!((xmin.value(0), ymin.value(0), xmax.value(0), ymax.value(0)), (-122.5, 37.75, -122.5, 37.75));
    assert_eq!((xmin.value(1), ymin.value(1), xmax.value(1), ymax.value(1)), (10.0, 50.0, 11.0, 51.5));

    let clip = batch.column_by_name("emb_clip").unwrap().as_fixed_size_list();
    assert_eq!(clip.value(0).as_primitive::<Float32Type>().values().to_vec(), vec![1.0, 2.0, 3.0]);
    assert_eq!(clip.value(1).as_primitive::<Float32Type>().values().to_vec(), vec![-1.0, 0.0, 1.0]);
    assert!(clip.is_null(2));
    let graft = batch.column_by_name("emb_graft").unwrap().as_fixed_size_list();
    assert!(graft.is_null(1));
    assert_eq!(graft.value(2).as_primitive::<Float32Type>().values().to_vec(), vec![9.0, 8.0]);

    let props = batch.column_by_name("properties").unwrap().as_string::<i32>();
    let p0: serde_json::Value = serde_json::from_str(props.value(0)).unwrap();
    assert_eq!(p0, serde_json::json!({"source": "flickr", "n": 42}));
    assert!(props.is_null(1));

    // The geometry is standard WKB: the tile ring comes back closed.
    let geom = batch.column_by_name("geometry").unwrap().as_binary::<i32>();
    let tile_wkb = geom.value(1);
    assert_eq!(&tile_wkb[..9], &[1, 3, 0, 0, 0, 1, 0, 0, 0], "little-endian Polygon, one ring");
    assert_eq!(u32::from_le_bytes(tile_wkb[9..13].try_into().unwrap()), 5);
    let point = geom.value(0);
    assert_eq!(point.len(), 21);
    assert_eq!(f64::from_le_bytes(point[5..13].try_into().unwrap()), -122.5);
    assert_eq!(f64::from_le_bytes(point[13..21].try_into().unwrap()), 37.75);
}

fn arrow_select_concat(batches: &[RecordBatch]) -> RecordBatch {
    assert_eq!(batches.len(), 1, "small export reads back as one batch");
    batches[0].clone()
}

#[test]
fn export_reads_back_through_the_embedding_reader_geometry() {
    // The exported geometry column is what ParquetVectorReader reads as a footprint.
    // (It has no lon/lat/embedding columns, so check only the error names them.)
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.parquet");
    let mut w = GeoParquetWriter::create(&path, &[("clip".into(), 2)]).unwrap();
    w.write_batch(&[ExportRow { space_vectors: vec![Some(vec![1.0, 2.0])], ..tile("a", vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], None) }])
        .unwrap();
    w.finish().unwrap();
    let e = ParquetVectorReader::open(&path).unwrap_err().to_string();
    assert!(e.contains("missing required column 'lon'") && e.contains("emb_clip"), "{e}");
}

#[test]
fn bad_rows_name_file_and_row_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.parquet");
    let mut w = GeoParquetWriter::create(&path, &spaces()).unwrap();
    w.write_batch(&[photo(1, 0.0, 0.0, None, None)]).unwrap();
    let cases: Vec<(ExportRow, &str)> = vec![
        (photo(2, 0.0, 91.0, None, None), "not a longitude/latitude"),
        (photo(2, f64::NAN, 0.0, None, None), "not a longitude/latitude"),
        (photo(2, 0.0, 0.0, Some(vec![1.0]), None), "space 'clip' has 1 values, expected 3"),
        (photo(2, 0.0, 0.0, None, Some(vec![1.0, f32::INFINITY])), "'graft' value 2 (1-based) is not finite"),
        (tile("t", vec![[0.0, 0.0], [1.0, 1.0]], None), "at least 4"),
        (ExportRow { space_vectors: vec![], ..photo(2, 0.0, 0.0, None, None) }, "0 space vectors"),
    ];
    for (row, want) in cases {
        let e = w.write_batch(&[photo(2, 0.0, 0.0, None, None), row]).unwrap_err().to_string();
        assert!(e.contains("bad.parquet row 3 (1-based):") && e.contains(want), "{e}");
    }
    assert_eq!(w.finish().unwrap(), 1, "failed batches wrote nothing");

    let e = GeoParquetWriter::create(&path, &[("a".into(), 2), ("a".into(), 3)]).unwrap_err().to_string();
    assert!(e.contains("'a'"), "{e}");
    let e = GeoParquetWriter::create(&path, &[("a".into(), 0)]).unwrap_err().to_string();
    assert!(e.contains("dimension 0"), "{e}");
}

#[test]
fn dropped_writer_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.parquet");
    let mut w = GeoParquetWriter::create(&path, &spaces()).unwrap();
    w.write_batch(&[photo(1, 0.0, 0.0, None, None)]).unwrap();
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn many_rows_across_row_groups_keep_order_and_bbox() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.parquet");
    let mut w = GeoParquetWriter::create(&path, &[("clip".into(), 4)]).unwrap();
    let mut model = Vec::new();
    for chunk in 0..5 {
        let rows: Vec<ExportRow> = (0..1000)
            .map(|i| {
                let (lon, lat) = (rng.random_range(-180.0..=180.0), rng.random_range(-90.0..=90.0));
                let v: Vec<f32> = (0..4).map(|_| rng.random()).collect();
                model.push((lon, lat, v.clone()));
                ExportRow {
                    id: RecordId::Int(chunk * 1000 + i),
                    kind: Kind::Photo,
                    time: None,
                    geometry: ExportGeom::Point(lon, lat),
                    space_vectors: vec![Some(v)],
                    extra: serde_json::json!({}),
                }
            })
            .collect();
        w.write_batch(&rows).unwrap();
    }
    assert_eq!(w.finish().unwrap(), 5000);
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
    let want_bbox = model.iter().fold([f64::MAX, f64::MAX, f64::MIN, f64::MIN], |b, (x, y, _)| {
        [b[0].min(*x), b[1].min(*y), b[2].max(*x), b[3].max(*y)]
    });
    let geo = b.metadata().file_metadata().key_value_metadata().unwrap().iter().find(|k| k.key == "geo").unwrap();
    let geo: serde_json::Value = serde_json::from_str(geo.value.as_deref().unwrap()).unwrap();
    assert_eq!(geo["columns"]["geometry"]["bbox"], serde_json::json!(want_bbox));
    let mut k = 0;
    for batch in b.build().unwrap() {
        let batch = batch.unwrap();
        let ids = batch.column_by_name("id_int").unwrap().as_primitive::<Int64Type>();
        let xmin = batch.column_by_name("bbox").unwrap().as_struct().column(0).as_primitive::<Float64Type>().clone();
        let emb = batch.column_by_name("emb_clip").unwrap().as_fixed_size_list();
        for i in 0..batch.num_rows() {
            assert_eq!(ids.value(i), k as i64);
            assert_eq!(xmin.value(i), model[k].0);
            assert_eq!(emb.value(i).as_primitive::<Float32Type>().values().to_vec(), model[k].2);
            k += 1;
        }
    }
    assert_eq!(k, 5000);
}

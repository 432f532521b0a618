//! Photo readers: real EXIF JPEGs from the `exif` npm package (run `tools/fetch-data.sh`
//! first), and YFCC / Flickr JSON / CSV / JSONL fixtures written here with bad rows in
//! known places, so each error must name its file and line.

use std::path::{Path, PathBuf};

use graftdb::ingest::photos::{read_photos, OnError, PhotoFormat, PhotoOptions};
use graftdb::RecordId;

fn data(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(rel);
    assert!(p.exists(), "{} is missing: run tools/fetch-data.sh to download the test data", p.display());
    p
}

fn skip() -> PhotoOptions {
    PhotoOptions::default()
}
fn fail() -> PhotoOptions {
    PhotoOptions { on_error: OnError::Fail, ..PhotoOptions::default() }
}

/// Seconds since the epoch → microseconds.
fn us(s: i64) -> Option<i64> {
    Some(s * 1_000_000)
}

#[test]
fn exif_gps_matches_exiftool() {
    // Expected values read once with `exiftool -n -GPSLatitude -GPSLongitude -DateTimeOriginal`
    // (ExifTool 12.57, Debian 12) on test1-3.jpg of npm exif@0.6.0. test1's raw rationals are
    // 37/1 5310/100 0/1 N and 122/1 3735/100 0/1 W, i.e. 37.885, -122.6225.
    // Times are DateTimeOriginal taken as UTC (the files carry no OffsetTimeOriginal).
    let want = [
        ("test1", 37.885, -122.6225, 1_360_166_403), // 2013:02:06 16:00:03
        ("test2", 37.814_666_666_666_7, -122.264_166_666_667, 1_356_274_069), // 2012:12:23 14:47:49
        ("test3", 37.776_333_333_333_3, -122.419_666_666_667, 1_356_205_202), // 2012:12:22 19:40:02
    ];
    let report = read_photos(&data("exif"), &fail()).unwrap();
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    assert_eq!(report.photos.len(), 3);
    for (p, (id, lat, lon, t)) in report.photos.iter().zip(want) {
        assert_eq!(p.id, RecordId::from(id));
        assert!((p.lat - lat).abs() < 1e-6 && (p.lon - lon).abs() < 1e-6, "{id}: {},{}", p.lat, p.lon);
        assert_eq!(p.time, us(t), "{id}");
        assert_eq!(p.source, "exif");
        assert!(p.url.as_deref().is_some_and(|u| u.ends_with(&format!("{id}.jpg"))));
    }
    // A single file works too, and Auto picks EXIF by extension.
    let one = read_photos(&data("exif/test1.jpg"), &skip()).unwrap();
    assert_eq!(one.photos.len(), 1);
}

#[test]
fn jpeg_without_gps_is_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
    img.save(dir.path().join("plain.jpg")).unwrap();
    std::fs::copy(data("exif/test2.jpg"), dir.path().join("gps.jpg")).unwrap();
    let report = read_photos(dir.path(), &skip()).unwrap();
    assert_eq!(report.photos.len(), 1);
    assert_eq!(report.bad.len(), 1);
    assert!(report.bad[0].at.ends_with("plain.jpg"), "{:?}", report.bad);
    let err = read_photos(dir.path(), &fail()).unwrap_err().to_string();
    assert!(err.contains("plain.jpg"), "{err}");
}

/// A YFCC row: `lead` columns, then the 20 fixed ones.
fn yfcc(lead: &[&str], taken: &str, lon: &str, lat: &str, acc: &str, video: bool) -> String {
    let id = lead.iter().find(|c| c.len() >= 5).copied().unwrap_or("0");
    let mut cols: Vec<String> = lead.iter().map(|s| (*s).to_owned()).collect();
    cols.extend(
        [taken, "2012-02-17 10:00:00.0", "Canon+EOS+7D", "title", "desc", "bridge,fog", "", lon, lat, acc]
            .map(str::to_owned),
    );
    cols.push(format!("http://www.flickr.com/photos/alice/{id}/"));
    cols.push(format!("http://farm1.staticflickr.com/1/{id}_abc.jpg"));
    cols.extend(
        ["Attribution License", "http://creativecommons.org/licenses/by/2.0/", "1", "1", "abc", "def", "jpg"]
            .map(str::to_owned),
    );
    cols.push(if video { "1" } else { "0" }.to_owned());
    cols.join("\t")
}

#[test]
fn yfcc_bad_rows_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photos.tsv");
    let rows = [
        /* 1 */ yfcc(&["10001", "12@N00"], "2012-02-16 09:56:37.0", "-122.4194", "37.7749", "16", false),
        /* 2 */ yfcc(&["10002", "12@N00"], "2012-02-16 09:56:37.0", "-122.4", "95.0", "16", false), // bad lat
        /* 3 */ yfcc(&["10003", "12@N00"], "2012-02-16 09:56:37.0", "NaN", "37.7", "16", false), // NaN
        /* 4 */ yfcc(&["10004", "12@N00"], "2012-13-45 99:00:00.0", "-122.4", "37.7", "16", false), // bad date
        /* 5 */ "10005\t12@N00\t2012-02-16 09:56:37.0\tonly a few columns".to_owned(), // missing fields
        /* 6 */ yfcc(&["10001", "12@N00"], "2013-01-01 00:00:00.0", "-122.5", "37.8", "15", false), // dup id
        /* 7 */ yfcc(&["10007", "12@N00"], "2013-01-01 00:00:00.0", "-122.5", "37.8", "15", true), // video
        /* 8 */ yfcc(&["10008", "12@N00"], "2013-01-01 00:00:00.0", "", "", "", false), // no geotag
        /* 9 */ yfcc(&["10009", "12@N00"], "", "2.3522", "48.8566", "11", false), // ok, no date
    ];
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();

    let report = read_photos(&path, &skip()).unwrap();
    let ids: Vec<_> = report.photos.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids, [RecordId::Int(10001), RecordId::Int(10009)]);
    assert_eq!(report.filtered, 2, "video and untagged rows are filtered");
    let lines: Vec<&str> = report.bad.iter().map(|b| b.at.rsplit(' ').next().unwrap()).collect();
    assert_eq!(lines, ["2", "3", "4", "5", "6"], "{:?}", report.bad);
    for b in &report.bad {
        assert!(b.at.starts_with(&path.display().to_string()), "{b:?}");
    }
    assert!(report.bad[0].reason.contains("latitude"), "{:?}", report.bad[0]);
    assert!(report.bad[4].reason.contains("duplicate id 10001"), "{:?}", report.bad[4]);

    let p = &report.photos[0];
    assert_eq!((p.lat, p.lon, p.accuracy), (37.7749, -122.4194, Some(16)));
    assert_eq!(p.time, us(1_329_386_197));
    assert_eq!(p.user.as_deref(), Some("12@N00"));
    assert_eq!(p.source, "yfcc100m");
    assert_eq!(p.license.as_deref(), Some("Attribution License"));
    assert_eq!(report.photos[1].time, None);

    let err = read_photos(&path, &fail()).unwrap_err().to_string();
    assert!(err.contains("photos.tsv line 2"), "{err}");
}

#[test]
fn yfcc_with_a_leading_row_id_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("yfcc_lines.txt");
    let rows = [
        yfcc(&["1", "10001", "alice"], "2012-02-16 09:56:37.0", "-122.4194", "37.7749", "16", false),
        yfcc(&["2", "10002", "ab12cd", "12@N00", "alice"], "2012-02-16 09:56:37.0", "-122.4", "37.7", "14", false),
    ];
    std::fs::write(&path, rows.join("\n")).unwrap();
    let opts = PhotoOptions { min_accuracy: Some(15), ..skip() };
    let report = read_photos(&path, &opts).unwrap(); // Auto sniffs the tabs
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    assert_eq!(report.photos.len(), 1);
    assert_eq!(report.photos[0].id, RecordId::Int(10001));
    assert_eq!(report.filtered, 1, "accuracy 14 < 15");
}

#[test]
fn flickr_json_bad_rows_are_named_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("search.json");
    let text = r#"{"photos": {"page": 1, "pages": 1, "perpage": 250, "total": 7,
  "photo": [
    {"id": "5001", "owner": "12@N00", "latitude": "37.8199", "longitude": "-122.4783", "accuracy": "16", "datetaken": "2014-06-01 12:00:00", "license": "4", "url_o": "https://live.staticflickr.com/1/5001_o.jpg", "url_c": "https://live.staticflickr.com/1/5001_c.jpg"},
    {"id": "5002", "owner": "12@N00", "latitude": 0, "longitude": 0, "accuracy": 0, "datetaken": "2014-06-01 12:00:00"},
    {"id": "5003", "owner": "12@N00", "longitude": -122.4, "accuracy": 16, "datetaken": "2014-06-01 12:00:00"},
    {"id": "5004", "owner": "12@N00", "latitude": 37.7, "longitude": -122.4, "accuracy": 16, "datetaken": "not a date"},
    {"id": "5001", "owner": "12@N00", "latitude": 37.7, "longitude": -122.4, "accuracy": 16, "datetaken": "2014-06-01 12:00:00"},
    {"id": "5006", "owner": "99@N00", "latitude": 51.5007, "longitude": -0.1246, "accuracy": 15, "datetaken": "2015-01-01 00:00:00", "url_l": "https://live.staticflickr.com/1/5006_l.jpg"},
    {"id": "5007", "owner": "99@N00", "latitude": "abc", "longitude": -0.1246, "accuracy": 15}
  ]}, "stat": "ok"}"#;
    std::fs::write(&path, text).unwrap();

    let report = read_photos(&path, &skip()).unwrap();
    let ids: Vec<_> = report.photos.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids, [RecordId::Int(5001), RecordId::Int(5006)]);
    let at: Vec<String> = report.bad.iter().map(|b| b.at.clone()).collect();
    let want: Vec<String> = [4, 5, 6, 7, 9].iter().map(|l| format!("{} line {l}", path.display())).collect();
    assert_eq!(at, want, "{:?}", report.bad);
    assert!(report.bad[0].reason.contains("0,0"), "{:?}", report.bad[0]);
    assert!(report.bad[1].reason.contains("missing latitude"), "{:?}", report.bad[1]);
    assert!(report.bad[3].reason.contains("duplicate"), "{:?}", report.bad[3]);

    let p = &report.photos[0];
    assert_eq!((p.lat, p.lon, p.accuracy), (37.8199, -122.4783, Some(16)));
    assert_eq!(p.url.as_deref(), Some("https://live.staticflickr.com/1/5001_o.jpg"), "url_o is preferred");
    assert_eq!(p.source, "flickr");
    assert_eq!(p.time, us(1_401_624_000));

    let err = read_photos(&path, &fail()).unwrap_err().to_string();
    assert!(err.contains("search.json line 4"), "{err}");

    std::fs::write(&path, r#"{"stat": "fail", "code": 100, "message": "Invalid API Key"}"#).unwrap();
    let err = read_photos(&path, &skip()).unwrap_err().to_string();
    assert!(err.contains("Invalid API Key"), "{err}");
}

#[test]
fn csv_and_jsonl_with_images_dir() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("a.jpg"), b"x").unwrap();
    std::fs::write(images.join("c.jpg"), b"x").unwrap();

    let csv = dir.path().join("photos.csv");
    std::fs::write(
        &csv,
        "id,Latitude,lng,taken,accuracy,url,license,user\n\
         a,37.1,-122.1,2020-01-02T03:04:05Z,16,https://example.com/x/a.jpg,CC-BY,bob\n\
         b,-91,10,,,,,\n\
         c,12.5,\"13.5\",2020-01-02,,c.jpg,,\n\
         ,1,1,,,,,\n",
    )
    .unwrap();
    let opts = PhotoOptions { images_dir: Some(images.clone()), ..skip() };
    let report = read_photos(&csv, &opts).unwrap();
    assert_eq!(report.photos.len(), 2);
    let a = &report.photos[0];
    assert_eq!(a.id, RecordId::from("a"));
    assert_eq!(a.time, us(1_577_934_245));
    assert_eq!(a.url.as_deref(), Some(images.join("a.jpg").to_str().unwrap()), "basename resolved locally");
    assert_eq!(a.user.as_deref(), Some("bob"));
    assert_eq!(report.photos[1].url.as_deref(), Some(images.join("c.jpg").to_str().unwrap()));
    let at: Vec<&str> = report.bad.iter().map(|b| b.at.as_str()).collect();
    assert_eq!(at, [format!("{} line 3", csv.display()), format!("{} line 5", csv.display())]);

    let jsonl = dir.path().join("photos.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": 1, \"lat\": 45.0, \"lon\": 7.0, \"time\": \"2019-05-05 10:00:00\"}\n\
         \n\
         {\"id\": 2, \"lat\": \"45.1\", \"lon\": \"7.1\"}\n\
         {\"id\": 3, \"lat\": 45.1}\n\
         not json\n",
    )
    .unwrap();
    let report = read_photos(&jsonl, &skip()).unwrap();
    assert_eq!(report.photos.len(), 2);
    assert_eq!(report.photos[0].source, "jsonl");
    let lines: Vec<&str> = report.bad.iter().map(|b| b.at.rsplit(' ').next().unwrap()).collect();
    assert_eq!(lines, ["4", "5"]);

    let no_lat = dir.path().join("nolat.csv");
    std::fs::write(&no_lat, "id,lon\n1,2\n").unwrap();
    let err = read_photos(&no_lat, &PhotoOptions { format: PhotoFormat::Csv, ..skip() }).unwrap_err().to_string();
    assert!(err.contains("nolat.csv line 1") && err.contains("latitude"), "{err}");
}

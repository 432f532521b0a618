//! Record builders shared by the engine tests.

use graftdb::{Photo, Record, RecordId};

/// A photo with an integer id at `(lon, lat)`, no time and no optional fields.
pub fn photo_at(id: i64, lon: f64, lat: f64) -> Record {
    Record::Photo(Photo { id: RecordId::Int(id), lon, lat, accuracy: None, time: None, source: "test".into(), license: None, url: None, user: None })
}

//! The HTTP handlers. Everything that touches the database runs on the blocking pool.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use super::request::{self, Context, Format};
use super::{assets, openapi, AppState};
use crate::{Kind, PixelRef, Record};

/// All routes over one shared state.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.limits.body_bytes;
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{*file}", get(assets::file))
        .route("/healthz", get(healthz))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .route("/stats", get(stats))
        .route("/query", post(query))
        .route("/tiles", get(tile_list))
        .route("/tiles/{*file}", get(tile_png))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, None, "no such endpoint; see /openapi.json") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Run `f` on the blocking pool with a query permit, within the query time limit.
async fn blocking<T: Send + 'static>(state: &Arc<AppState>, f: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    let limit = state.limits.query_time;
    let slow = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, format!("the query took longer than the server's limit of {} ms", limit.as_millis()));
    let work = async {
        let permit = state.permits.clone().acquire_owned().await.map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, "the server is shutting down"))?;
        let st = state.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&st)
        })
        .await;
        joined.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, format!("internal error: {e}")))?
    };
    tokio::time::timeout(limit, work).await.map_err(|_| slow())?
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn stats(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    blocking(&state, |st| {
        let mut v = serde_json::to_value(st.db.stats()?).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string()))?;
        let l = &st.limits;
        v["server"] = json!({
            "text_queries": st.text.is_some(),
            "limits": {"body_bytes": l.body_bytes, "max_k": l.max_k, "polygon_vertices": l.polygon_vertices,
                       "text_chars": l.text_chars, "query_ms": l.query_time.as_millis() as u64, "tile_list": l.tile_list},
        });
        Ok(Json(v))
    })
    .await
}

async fn query(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE { format!("the body is larger than {} bytes", state.limits.body_bytes) } else { e.body_text() };
        ApiError::new(status, Some("body"), msg)
    })?;
    let req = request::parse(&body)?;
    blocking(&state, move |st| {
        let cx = Context { db: &st.db, text: st.text.as_ref().map(|(e, d)| (e, *d)), limits: &st.limits };
        let planned = request::plan(&req, &cx)?;
        let res = crate::spec::search_leaving_out(&st.db, planned.query, planned.leave_out)?;
        let e = &res.explain;
        let explain = json!({"path": e.path.as_str(), "rows": e.rows, "estimate": e.estimate, "ranges": e.ranges, "tested": e.tested,
                             "matched": e.matched, "exact_threshold": e.exact_threshold, "unindexed": e.unindexed,
                             "f32_reads": e.rescored, "sketch_skips": e.sketched, "partitions": e.partitions, "micros": e.micros});
        Ok(Json(match planned.format {
            Format::Json => json!({"hits": crate::json::hits_json(&res.hits), "explain": explain}),
            Format::Geojson => {
                let mut fc = crate::json::feature_collection(&res.hits);
                fc["explain"] = explain;
                fc
            }
        }))
    })
    .await
}

/// `GET /tiles?bbox=W,S,E,N&limit=N`: the footprints of tiles in view, for the basemap.
#[derive(Debug, serde::Deserialize)]
struct TileListParams {
    bbox: Option<String>,
    limit: Option<usize>,
}

async fn tile_list(State(state): State<Arc<AppState>>, params: Result<Query<TileListParams>, axum::extract::rejection::QueryRejection>) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad("limit", e.body_text()))?;
    let bbox = match &p.bbox {
        None => [-180.0, -90.0, 180.0, 90.0],
        Some(t) => {
            let v: Vec<f64> = t.split(',').map(|x| x.trim().parse::<f64>()).collect::<Result<_, _>>().map_err(|e| ApiError::bad("bbox", format!("'{t}': {e}")))?;
            let [w, s, e, n]: [f64; 4] = v.try_into().map_err(|_| ApiError::bad("bbox", format!("'{t}': expected W,S,E,N")))?;
            // A map view may run past ±180°: clamp, and check like a query's bbox.
            let (w, e) = if e - w >= 360.0 { (-180.0, 180.0) } else { (w.max(-180.0), e.min(180.0)) };
            let b = [w, s.max(-90.0), e, n.min(90.0)];
            crate::Region::bbox(b[0], b[1], b[2], b[3])?;
            if w > e {
                return Err(ApiError::bad("bbox", "west is east of east"));
            }
            b
        }
    };
    let limit = p.limit.unwrap_or(state.limits.tile_list).min(state.limits.tile_list);
    blocking(&state, move |st| {
        let mut feats = Vec::new();
        let truncated = st.db.records_in(bbox, Some(Kind::Tile), limit, |_, rec| {
            if let Record::Tile(t) = rec {
                let pixels = !matches!(t.pixels, PixelRef::None);
                feats.push(json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [t.footprint]},
                                  "properties": {"id": t.id.to_json(), "source": t.source, "pixels": pixels}}));
            }
            Ok(())
        })?;
        Ok(Json(json!({"type": "FeatureCollection", "features": feats, "truncated": truncated})))
    })
    .await
}

/// `GET /tiles/{id}.png`: a tile's stored PNG, or its file window read through GDAL.
async fn tile_png(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Result<Response, ApiError> {
    let Some(id) = file.strip_suffix(".png").map(str::to_string) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, Some("id"), format!("'{file}': tile images are at /tiles/ID.png")));
    };
    let png = blocking(&state, move |st| {
        let Some((_, Record::Tile(t))) = crate::spec::find_record_of(&st.db, Some(Kind::Tile), &id)? else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, Some("id"), format!("no tile has id '{id}'")));
        };
        match t.pixels {
            PixelRef::Stored(bytes) => Ok(bytes),
            PixelRef::File { path, window } => st
                .pixels
                .window_png(std::path::Path::new(&path), window)
                .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, Some("id"), format!("tile '{id}': its pixels cannot be read: {e}"))),
            PixelRef::None => Err(ApiError::new(StatusCode::NOT_FOUND, Some("id"), format!("tile '{id}' keeps no pixels"))),
        }
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "max-age=3600")], png).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state(query_time: Duration, concurrent: usize) -> (tempfile::TempDir, Arc<AppState>) {
        let dir = tempfile::tempdir().unwrap();
        crate::Db::create(dir.path().join("db")).unwrap();
        let limits = super::super::Limits { query_time, concurrent, ..Default::default() };
        let opts = super::super::ServeOptions { limits, ..super::super::ServeOptions::new(dir.path().join("db")) };
        let st = Arc::new(AppState::open(&opts).unwrap());
        (dir, st)
    }

    #[test]
    fn a_slow_query_gets_503_and_the_next_one_runs() {
        let (_dir, st) = state(Duration::from_millis(100), 1);
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let slow = blocking(&st, |_| {
                std::thread::sleep(Duration::from_millis(400));
                Ok(())
            })
            .await;
            let e = slow.expect_err("over the time limit");
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(e.message.contains("100 ms"), "{}", e.message);
            // The abandoned query holds the only permit until its thread ends; then the
            // next query gets it and runs.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let fast = blocking(&st, |s| Ok(s.db.spaces()?.len())).await.expect("runs");
            assert_eq!(fast, 0);
        });
    }
}

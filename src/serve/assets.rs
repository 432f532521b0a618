//! The map page (`src/serve/page/`) and the vendored Leaflet files (`build.rs`), served from
//! memory: the page needs nothing from the internet.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::error::ApiError;

include!(concat!(env!("OUT_DIR"), "/vendored.rs"));

const INDEX: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// Whether the vendored map libraries were compiled in (`tools/setup.sh` fetches them).
pub fn vendored() -> bool {
    VENDORED.iter().any(|(p, _)| *p == "leaflet.js")
}

/// `GET /`: the map page, or a page saying how to get the map libraries.
pub async fn index() -> Html<String> {
    if vendored() {
        Html(INDEX.to_string())
    } else {
        Html(
            "<!doctype html><meta charset=utf-8><title>graftdb</title><h1>graftdb serve</h1>\
             <p>This binary was built without the map libraries. Run <code>tools/setup.sh</code> \
             (it unpacks Leaflet from npm into <code>vendor/web/</code>), then rebuild. \
             The JSON API works regardless: see <a href=\"/openapi.json\">/openapi.json</a>.</p>"
                .to_string(),
        )
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "text/plain; charset=utf-8",
    }
}

/// `GET /assets/{file}`: the page's script and style, and the vendored files.
pub async fn file(Path(path): Path<String>) -> Response {
    let body: Option<&'static [u8]> = match path.as_str() {
        "app.js" => Some(APP_JS.as_bytes()),
        "app.css" => Some(APP_CSS.as_bytes()),
        p => VENDORED.iter().find(|(name, _)| *name == p).map(|(_, b)| *b),
    };
    match body {
        Some(b) => ([(header::CONTENT_TYPE, content_type(&path)), (header::CACHE_CONTROL, "max-age=86400")], b).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, Some("file"), format!("no asset '{path}'")).into_response(),
    }
}

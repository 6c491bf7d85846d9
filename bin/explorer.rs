//! The explorer: a static web page served at `/` that draws a node's neighbourhood as a graph
//! and redraws it live from the change feed (`/v1/changes`), with the replica's status in a
//! corner. Three files (`explorer/index.html`, `app.js`, `style.css`) are embedded in the
//! binary: no build step, no CDN, no JavaScript library.
//!
//! For: looking at the replica by hand, demos, and the real-browser test
//! (`tests/explorer.rs`). Not for: anything a program should rely on — the page only calls the
//! public API, which is the interface to use. These routes are not behind the bearer token (the
//! page holds no data); the API calls the page makes are, and it sends the token the user types.

use axum::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("explorer/index.html");
const APP_JS: &str = include_str!("explorer/app.js");
const STYLE_CSS: &str = include_str!("explorer/style.css");

/// `GET /`, `GET /explorer/app.js` and `GET /explorer/style.css`, each `Cache-Control: no-cache`
/// (the files change with the binary, and a browser revalidates instead of running stale code).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/explorer/app.js",
            get(|| async { file("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/explorer/style.css",
            get(|| async { file("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_references_only_embedded_files() {
        // No CDN, no external script: every src/href in the page is one of our routes.
        for needle in ["http://", "https://", "//cdn"] {
            assert!(!INDEX_HTML.contains(needle), "index.html references {needle}");
        }
        assert!(INDEX_HTML.contains("/explorer/app.js") && INDEX_HTML.contains("/explorer/style.css"));
        assert!(INDEX_HTML.contains("id=\"status\""));
        assert!(APP_JS.contains("data-node"));
    }
}

//! The live page at `/`: machines drawn as state graphs, instances with a
//! search, and the event stream of `GET /v1/watch` — plain HTML, JS and CSS
//! from `page/`, compiled into the binary, no build step. The files are
//! served without authentication (they hold no data); the page asks for a
//! token and sends it with its API calls and as the WebSocket's first
//! message.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// A file of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Index,
    Script,
    Style,
}

impl Asset {
    fn content(self) -> (&'static str, &'static str) {
        match self {
            Asset::Index => (include_str!("page/index.html"), "text/html; charset=utf-8"),
            Asset::Script => (
                include_str!("page/app.js"),
                "text/javascript; charset=utf-8",
            ),
            Asset::Style => (include_str!("page/style.css"), "text/css; charset=utf-8"),
        }
    }
}

/// The file, with its content type; not cached, so a new binary's page is
/// the one a browser shows.
pub fn response(asset: Asset) -> Response<Full<Bytes>> {
    let (body, content_type) = asset.content();
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

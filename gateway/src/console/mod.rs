//! The web console: one HTML page, one script and one style sheet, compiled into the binary
//! (`include_str!`) and served under `/console/` on the admin listener. The page holds no data
//! and needs no login to load: everything it shows or changes goes through the admin API
//! (`/api/v1/...`), authenticated by the session cookie of `POST /api/v1/login`. Nothing is
//! fetched from elsewhere, so it works on a host without network access; the
//! Content-Security-Policy lets the page load and call only its own origin.
//! docs/architecture.md ("Web console") says why a bundled page rather than server rendering.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use hyper::{Response, StatusCode};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Only this origin, no inline script or style, no framing (clickjacking).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The answer for a console path (`/console...`), or None for a path that is not one.
pub fn respond(path: &str) -> Option<Response<Full<Bytes>>> {
    let (ctype, body) = match path {
        "/console" => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/console/"));
            return Some(r);
        }
        "/console/" | "/console/index.html" => ("text/html; charset=utf-8", INDEX),
        "/console/app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/console/app.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // A new binary may bring a new page: revalidate rather than keep an old one.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}

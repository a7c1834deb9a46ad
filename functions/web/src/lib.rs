//! Spindle's web component: the converter's page at `/` (DESIGN.md point
//! 10), on the same origin as the API, so the page needs no CORS.
//!
//! It serves the files under `static/` (compiled in, see `assets.rs`) to
//! `GET` and `HEAD`; any other path is a JSON 404 like the rest of the app.
//! Routed at `/...` in `spin.toml`: Spin's router prefers every more
//! specific route, so the API's routes are never shadowed.
//!
//! Every answer carries the page's security headers ([`SECURITY_HEADERS`]):
//! scripts and styles only from this origin, no inline script, no framing,
//! no referrer, no MIME sniffing.

// The bindings wit-bindgen generates (the exported handler) are unsafe
// FFI; the code written here is not.
#![allow(unsafe_code)]

mod assets;

use bytes::Bytes;
use spin_sdk::http::{
    BoxBody, FullBody, HeaderName, HeaderValue, Method, Request, Response, StatusCode, box_body,
};
#[cfg(target_arch = "wasm32")]
use spin_sdk::http_service;

use api_error::ApiError;

type HttpResponse = Response<BoxBody>;

/// The page's Content-Security-Policy: everything from this origin only;
/// `blob:` images and downloads for the MP3 fetched with the token; no
/// inline script or style, plugins, `<base>` or framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; \
                       object-src 'none'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";

/// Sent with every answer of this component.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// The component's export. Only a wasm32 build exports it: a native build
/// (for the unit tests) cannot link the component-model export names.
#[cfg_attr(target_arch = "wasm32", http_service)]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
async fn handle(req: Request) -> HttpResponse {
    serve(req.method(), req.uri().path())
}

fn serve(method: &Method, path: &str) -> HttpResponse {
    let mut response = match answer(method, path) {
        Ok(response) => response,
        Err(e) => e.into_response(|text| box_body(FullBody::new(Bytes::from(text)))),
    };
    for (name, value) in SECURITY_HEADERS {
        response.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

fn answer(method: &Method, path: &str) -> Result<HttpResponse, ApiError> {
    let asset = assets::find(path).ok_or_else(|| {
        ApiError::not_found(format!(
            "no page or API route at {path}; open / for the converter's page"
        ))
    })?;
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} is a file of the page: only GET and HEAD, not {method}"),
        )
        .with_header(HeaderName::from_static("allow"), "GET, HEAD"));
    }
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(asset.body)
    };
    let mut response = Response::new(box_body(FullBody::new(body)));
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        HeaderName::from_static("content-length"),
        HeaderValue::from(asset.body.len()),
    );
    // Revalidated on every load, so a deploy shows at once.
    headers.insert(
        HeaderName::from_static("cache-control"),
        HeaderValue::from_static("no-cache"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_served_with_its_security_headers() {
        let response = serve(&Method::GET, "/");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        let csp = headers["content-security-policy"].to_str().expect("ASCII");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert!(!headers.contains_key("access-control-allow-origin"));
    }

    #[test]
    fn unknown_paths_and_methods_are_json_errors_with_the_same_headers() {
        let missing = serve(&Method::GET, "/nope");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()["content-type"], "application/json");
        assert_eq!(missing.headers()["x-content-type-options"], "nosniff");
        let post = serve(&Method::POST, "/");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()["allow"], "GET, HEAD");
        let head = serve(&Method::HEAD, "/style.css");
        assert_eq!(head.status(), StatusCode::OK);
        assert_ne!(head.headers()["content-length"], "0");
    }
}

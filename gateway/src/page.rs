//! The merchant's page at `/`: one HTML document, its script and style, and the vendored chart
//! library (uPlot), all embedded in the binary. The page calls only the public API, with the
//! token it got from `/auth/token`; its content security policy allows its own assets only.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cashflow_http::Problem;
use tower_http::set_header::SetResponseHeaderLayer;

/// A file of the page: its content, media type and entity tag (a digest of the content).
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        Asset { body, content_type, etag: format!("\"{:016x}\"", hasher.finish()) }
    }
}

/// The page (`""`, at `/`) and its files (at `/app/{name}`), by name.
static ASSETS: LazyLock<Vec<(&str, Asset)>> = LazyLock::new(|| {
    let (js, css) = ("text/javascript; charset=utf-8", "text/css; charset=utf-8");
    vec![
        ("", Asset::new(include_str!("../page/index.html"), "text/html; charset=utf-8")),
        ("app.js", Asset::new(include_str!("../page/app.js"), js)),
        ("app.css", Asset::new(include_str!("../page/app.css"), css)),
        ("uplot.js", Asset::new(include_str!("../page/vendor/uplot/uPlot.iife.min.js"), js)),
        ("uplot.css", Asset::new(include_str!("../page/vendor/uplot/uPlot.min.css"), css)),
    ]
});

fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}

/// Scripts, styles and API calls from this origin only; no inline code, no frames, no forms
/// sent anywhere (the page's forms are handled by its script).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn router() -> Router {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve(asset(""), &headers) }))
        .route(
            "/app/{name}",
            get(|Path(name): Path<String>, headers: HeaderMap| async move {
                serve(asset(&name).filter(|_| !name.is_empty()), &headers)
            }),
        )
        .layer(SetResponseHeaderLayer::overriding(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)))
}

/// The asset, or 304 when the client holds this version: browsers revalidate every time
/// (`no-cache`), so a new binary's page is seen at once.
fn serve(asset: Option<&Asset>, headers: &HeaderMap) -> Response {
    let Some(asset) = asset else { return Problem::not_found("no such file").into_response() };
    let cached = headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == asset.etag)
    });
    let status = if cached { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
    let body = if cached { "" } else { asset.body };
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (ETAG, HeaderValue::from_str(&asset.etag).expect("a quoted hex digest is a valid header value")),
    ];
    (status, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(tag) = if_none_match {
            req = req.header(IF_NONE_MATCH, tag);
        }
        router().oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_a_policy_of_own_assets_only() {
        let page = get("/", None).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = page.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self';") && !csp.contains("unsafe"), "{csp}");
        for (name, kind) in
            [("app.js", "javascript"), ("app.css", "css"), ("uplot.js", "javascript"), ("uplot.css", "css")]
        {
            let r = get(&format!("/app/{name}"), None).await;
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert!(r.headers()[CONTENT_TYPE].to_str().unwrap().contains(kind), "{name}");
        }
        for missing in ["/app/../Cargo.toml", "/app/Cargo.toml", "/app/index.html", "/app/"] {
            assert_eq!(get(missing, None).await.status(), StatusCode::NOT_FOUND, "{missing}");
        }
    }

    #[tokio::test]
    async fn a_client_holding_the_same_version_gets_304() {
        let first = get("/app/app.js", None).await;
        let etag = first.headers()[ETAG].to_str().unwrap().to_owned();
        assert_eq!(get("/app/app.js", Some(&etag)).await.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(get("/app/app.js", Some("\"0000\"")).await.status(), StatusCode::OK);
        assert_eq!(get("/app/app.js", Some("*")).await.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(get("/", Some(&etag)).await.status(), StatusCode::OK, "each file has its own tag");
    }
}

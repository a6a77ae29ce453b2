//! The page, compiled into the binary: it works offline and is the same
//! page as the binary's code.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    )
}

pub(super) async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

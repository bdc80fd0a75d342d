//! `/api/session`: whether the dashboard needs its token, and signing in and out of a
//! browser session (see [`crate::auth`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;
use tracing::warn;

use super::{header, Answer, App, Signed};
use crate::auth::{cookie, CSRF_COOKIE, SESSION_COOKIE, SESSION_TTL};

/// `GET /api/session`: `{"required", "signed_in"}`, so the page knows whether to ask
/// for the token.
pub(super) async fn session_state(
    State(app): State<Arc<App>>,
    signed: Option<Extension<Signed>>,
) -> Answer {
    Answer::ok(&json!({
        "required": app.auth.is_some(),
        "signed_in": signed.is_none_or(|Extension(Signed(s))| s),
    }))
}

/// `POST /api/session` with `{"token": "..."}`: opens a session (two cookies) when the
/// token is right; 401 otherwise.
pub(super) async fn sign_in(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let Some(auth) = &app.auth else {
        return Answer::ok(&json!({"required": false})).into_response();
    };
    let given = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_string));
    let Some(given) = given else {
        return Answer::error(400, "send {\"token\": \"...\"}").into_response();
    };
    if !auth.is_token(&given) {
        warn!("dashboard sign-in refused: wrong token");
        return Answer::error(401, "wrong token").into_response();
    }
    let (id, csrf) = auth.open_session();
    let age = SESSION_TTL.as_secs();
    let mut response = Answer::ok(&json!({"signed_in": true})).into_response();
    for value in [
        format!("{SESSION_COOKIE}={id}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict"),
        format!("{CSRF_COOKIE}={csrf}; Path=/; Max-Age={age}; SameSite=Strict"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().append(SET_COOKIE, v);
        }
    }
    response
}

/// `POST /api/session/end`: closes this browser's session and clears its cookies.
pub(super) async fn sign_out(State(app): State<Arc<App>>, request: Request) -> Response {
    if let (Some(auth), Some(id)) = (
        &app.auth,
        header(request.headers(), COOKIE).and_then(|c| cookie(c, SESSION_COOKIE)),
    ) {
        auth.close_session(id);
    }
    let mut response = Answer::ok(&json!({"signed_in": false})).into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        if let Ok(v) = HeaderValue::from_str(&format!("{name}=; Path=/; Max-Age=0")) {
            response.headers_mut().append(SET_COOKIE, v);
        }
    }
    response
}

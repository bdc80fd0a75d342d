//! What a handler sends back: the [`Answer`] type, its constructors and its response,
//! and the HTTP status of each error from the router ([`error_status`]).

use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pypelinin_common::protocol::ProtocolError;
use pypelinin_common::transport::TransportError;
use serde_json::{json, Value};

use crate::link::LinkError;

/// What to send back.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// Content-Type.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// Allowed methods, for a 405.
    pub allow: Option<&'static str>,
}

impl Answer {
    pub(super) fn json(status: u16, value: &Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_default(),
            allow: None,
        }
    }

    pub(super) fn ok<T: serde::Serialize>(value: &T) -> Answer {
        match serde_json::to_value(value) {
            Ok(v) => Answer::json(200, &v),
            Err(e) => Answer::error(500, &format!("encoding the answer: {e}")),
        }
    }

    pub(super) fn text(content_type: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status: 200,
            content_type,
            body: body.into(),
            allow: None,
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Answer {
        Answer::json(status, &json!({ "error": message }))
    }

    pub(super) fn method_not_allowed(allow: &'static str) -> Answer {
        Answer {
            allow: Some(allow),
            ..Answer::error(405, &format!("method not allowed; use {allow}"))
        }
    }

    pub(super) fn of<T: serde::Serialize>(result: Result<T, LinkError>) -> Answer {
        match result {
            Ok(v) => Answer::ok(&v),
            Err(e) => e.into(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            [(CONTENT_TYPE, HeaderValue::from_static(self.content_type))],
            self.body,
        )
            .into_response();
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<LinkError> for Answer {
    fn from(e: LinkError) -> Answer {
        Answer::error(error_status(&e), &e.to_string())
    }
}

/// The HTTP status that tells what went wrong asking the router.
pub fn error_status(e: &LinkError) -> u16 {
    match e {
        LinkError::Transport(TransportError::Refused(p)) => match p {
            ProtocolError::UnknownPipeline(_)
            | ProtocolError::UnknownJob { .. }
            | ProtocolError::UnknownSchedule(_) => 404,
            ProtocolError::Refused(_) | ProtocolError::Conflict(_) => 409,
            ProtocolError::InvalidPipeline(_) | ProtocolError::InvalidSchedule(_) => 400,
            _ => 502,
        },
        LinkError::Transport(TransportError::Unreachable { .. }) | LinkError::Abandoned(_) => 503,
        _ => 502,
    }
}

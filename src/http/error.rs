//! Every error answer the service gives, and its HTTP form — in one place.
//!
//! Client errors carry `{"error": "<stable code>", "detail": "<what is
//! wrong>"}`. Server-side trouble is logged with its cause where it happens
//! and answered without internals.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};
use serde_json::json;

use crate::providers::signature::SignatureError;
use crate::{domain::ValidationError, kafka::producer::PublishError};

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// The reason is for the log; the client is told nothing about which
    /// part failed, so a forger learns nothing from trying.
    #[error("invalid or missing signature")]
    Unauthorized(#[source] SignatureError),
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    RequestTimeout(Duration),
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("could not read the request body: {0}")]
    BadBody(String),
    #[error("not accepted: {source}")]
    Unavailable {
        #[source]
        source: PublishError,
        retry_after: Duration,
    },
}

pub type Body = Full<Bytes>;

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::BadBody(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code in the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(v) => v.code,
            Self::BadBody(_) => "bad_body",
            Self::Unauthorized(_) => "unauthorized",
            Self::RequestTimeout(_) => "request_timeout",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let detail = match &self {
            // The cause is logged by the handler; the client learns only
            // that it should retry.
            Self::Unavailable { .. } => "the event was not accepted; retry later".to_owned(),
            // Fixed text, never the reason: see `Unauthorized`.
            Self::Unauthorized(_) => "invalid or missing signature".to_owned(),
            other => other.to_string(),
        };
        let mut body = json!({ "error": self.code(), "detail": detail });
        if let Self::Invalid(ValidationError { field: Some(f), .. }) = &self {
            body["field"] = json!(f);
        }
        let mut resp = json_response(self.status(), &body);
        match &self {
            Self::MethodNotAllowed { allow } => {
                resp.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            Self::Unavailable { retry_after, .. } => {
                let secs = retry_after.as_secs().max(1);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            }
            // The rest of a slow body may still be on its way; the
            // connection cannot be reused.
            Self::RequestTimeout(_) => {
                resp.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_headers() {
        let r = ApiError::MethodNotAllowed { allow: "POST" }.into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[header::ALLOW], "POST");

        let r = ApiError::Unavailable {
            source: PublishError::Timeout(Duration::from_secs(5)),
            retry_after: Duration::from_millis(2500),
        }
        .into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");

        let r = ApiError::RequestTimeout(Duration::from_secs(30)).into_response();
        assert_eq!(r.status(), 408);
        assert_eq!(r.headers()[header::CONNECTION], "close");

        let r = ApiError::PayloadTooLarge { limit: 10 }.into_response();
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn a_refused_signature_says_nothing_about_why() {
        let r = ApiError::Unauthorized(SignatureError::NoMatch { signatures: 2 }).into_response();
        assert_eq!(r.status(), 401);
        let body = futures::executor::block_on(http_body_util::BodyExt::collect(r.into_body()))
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"error": "unauthorized", "detail": "invalid or missing signature"})
        );
    }
}

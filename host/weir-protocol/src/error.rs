//! Error bodies in the shapes Livepeer's AI clients parse, with the real cause in the message.

use serde::{Deserialize, Serialize};

/// `{"detail": {"msg": "..."}}`: the body of 400, 401, 402, 413, 415, 500 and 503 answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpErrorBody {
    /// The cause.
    pub detail: HttpErrorDetail,
}

/// The `detail` of an [`HttpErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpErrorDetail {
    /// Human-readable cause (never masked).
    pub msg: String,
}

impl HttpErrorBody {
    /// A body carrying `msg`.
    pub fn new(msg: impl Into<String>) -> HttpErrorBody {
        HttpErrorBody {
            detail: HttpErrorDetail { msg: msg.into() },
        }
    }
}

/// One invalid field: where (`["body", "width"]`), what is wrong, and an error type label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Location, FastAPI style: `["body", FIELD]`.
    pub loc: Vec<String>,
    /// What is wrong, with the accepted range or type.
    pub msg: String,
    /// Error type label, e.g. `missing`, `int_parsing`, `less_than_equal`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `{"detail": [FieldError, ...]}`: the body of a 422 answer; every invalid field is listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("invalid request: {}", .detail.iter().map(|e| format!("{}: {}", e.loc.join("."), e.msg)).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors {
    /// The invalid fields.
    pub detail: Vec<FieldError>,
}

impl ValidationErrors {
    /// Record a problem with `field`.
    pub fn push(&mut self, field: &str, kind: &str, msg: impl Into<String>) {
        self.detail.push(FieldError {
            loc: vec!["body".to_owned(), field.to_owned()],
            msg: msg.into(),
            kind: kind.to_owned(),
        });
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.detail.is_empty()
    }
}

/// An error answer of the AI API: a status and a body in one of the two shapes Livepeer
/// clients parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiHttpError {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: AiErrorBody,
}

/// The body of an [`AiHttpError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AiErrorBody {
    /// `{"detail":{"msg"}}`.
    Message(HttpErrorBody),
    /// `{"detail":[{loc,msg,type}]}` (422).
    Validation(ValidationErrors),
}

impl AiHttpError {
    /// `status` with `{"detail":{"msg": msg}}`.
    pub fn new(status: u16, msg: impl Into<String>) -> AiHttpError {
        AiHttpError {
            status,
            body: AiErrorBody::Message(HttpErrorBody::new(msg)),
        }
    }

    /// The human-readable cause.
    pub fn message(&self) -> String {
        match &self.body {
            AiErrorBody::Message(m) => m.detail.msg.clone(),
            AiErrorBody::Validation(v) => v.to_string(),
        }
    }
}

impl std::fmt::Display for AiHttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message())
    }
}

impl From<crate::body::BodyError> for AiHttpError {
    fn from(e: crate::body::BodyError) -> AiHttpError {
        let status = e.status();
        match e {
            crate::body::BodyError::Invalid(v) => AiHttpError {
                status,
                body: AiErrorBody::Validation(v),
            },
            other => AiHttpError::new(status, other.to_string()),
        }
    }
}

/// A body that could not be read (over the size limit, cut off), in the AI error shape.
#[cfg(feature = "axum")]
impl From<axum_core::extract::rejection::BytesRejection> for AiHttpError {
    fn from(e: axum_core::extract::rejection::BytesRejection) -> AiHttpError {
        let status = e.status().as_u16();
        let what = if status == 413 {
            "request body too large"
        } else {
            "cannot read the request body"
        };
        AiHttpError::new(status, format!("{what}: {}", e.body_text()))
    }
}

/// The whole request body as an extractor whose refusal (a body over the size limit: 413, or
/// one cut off) is already in the AI error shape instead of axum's plain text. Every handler
/// of both roles that reads a body whole takes it this way.
#[cfg(feature = "axum")]
pub struct AiBody(pub bytes::Bytes);

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequest<S> for AiBody {
    type Rejection = AiHttpError;

    async fn from_request(
        req: axum_core::extract::Request,
        state: &S,
    ) -> Result<AiBody, AiHttpError> {
        bytes::Bytes::from_request(req, state)
            .await
            .map(AiBody)
            .map_err(AiHttpError::from)
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for AiHttpError {
    fn into_response(self) -> axum_core::response::Response {
        let status = http::StatusCode::from_u16(self.status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.body).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_what_livepeer_clients_parse() {
        let body = serde_json::to_value(HttpErrorBody::new("no orchestrator offers upscale"))
            .expect("json");
        assert_eq!(
            body,
            serde_json::json!({"detail": {"msg": "no orchestrator offers upscale"}})
        );
        let mut v = ValidationErrors::default();
        v.push("width", "less_than_equal", "must be at most 2048");
        let body = serde_json::to_value(&v).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"detail": [{"loc": ["body", "width"], "msg": "must be at most 2048", "type": "less_than_equal"}]})
        );
        assert_eq!(
            v.to_string(),
            "invalid request: body.width: must be at most 2048"
        );
    }
}

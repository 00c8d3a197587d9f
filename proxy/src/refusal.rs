//! Why the proxy refuses what a client asked for, in its own words: a kind
//! (what the client can do about it), a message, and where the API
//! documents them a code and a position. The live and durable paths return
//! it; the front door answers it with an HTTP status (`http/error.rs`), and
//! a websocket sends its body as an error frame.

/// What kind of refusal, as a client acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is wrong: correct it (HTTP 400).
    Invalid,
    /// The user may not have it (403).
    Forbidden,
    /// No such thing (404).
    NotFound,
    /// Someone else holds it now: retry later (409).
    InUse,
    /// It existed and is no longer held: start again (410).
    Gone,
    /// Over a size limit (413).
    TooLarge,
    /// The proxy or the database cannot serve it now: retry (503).
    Unavailable,
}

/// A refusal answered to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: Kind,
    pub message: String,
    /// A machine-readable code (`FILTER_NOT_FOUND`, `ACKED_AHEAD`, ...).
    pub code: Option<&'static str>,
    /// Where in the client's input the error is (a query's byte offset).
    pub position: Option<usize>,
}

impl Refusal {
    pub fn new(kind: Kind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
            code: None,
            position: None,
        }
    }

    /// The request is wrong.
    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(Kind::Invalid, message)
    }

    /// Cannot be served now.
    pub fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal::new(Kind::Unavailable, message)
    }

    /// With a machine-readable code.
    pub fn code(mut self, code: &'static str) -> Refusal {
        self.code = Some(code);
        self
    }

    /// With the position in the client's input.
    pub fn at(mut self, position: Option<usize>) -> Refusal {
        self.position = position;
        self
    }

    /// The JSON body: the HTTP answer's, and a websocket's error frame.
    pub fn body(&self) -> serde_json::Value {
        error_body(&self.message, self.code, self.position)
    }
}

/// `{"error": message}`, with `"code"` and `"position"` when set: the body
/// of every error the proxy answers or sends.
pub fn error_body(message: &str, code: Option<&str>, position: Option<usize>) -> serde_json::Value {
    crate::frames::Frame::Error(crate::frames::Error {
        code,
        position,
        ..crate::frames::Error::new(message)
    })
    .value()
}

impl From<walcast_core::requests::BadRequest> for Refusal {
    fn from(e: walcast_core::requests::BadRequest) -> Refusal {
        Refusal::invalid(e.0)
    }
}

impl From<walcast_core::requests::SubscriptionError> for Refusal {
    /// A query that does not parse is refused at its position.
    fn from(e: walcast_core::requests::SubscriptionError) -> Refusal {
        use walcast_core::requests::SubscriptionError as E;
        match e {
            E::Query(q) => Refusal::invalid(q.message).at(Some(q.position)),
            E::Invalid(reason) => Refusal::invalid(reason),
        }
    }
}

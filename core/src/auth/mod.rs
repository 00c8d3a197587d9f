//! Who may do what: static bearer tokens (`--token`, full access), JSON
//! Web Tokens whose `walcast` claim limits tables, actions and rows
//! (`jwt.rs`, `rules.rs`), and token refresh on an open websocket.
//!
//! With neither static tokens nor a JWT key, every request has full
//! access. How a request carries its credential is the front door's
//! business (the proxy's `auth::credential`).

pub mod jwt;
pub mod rules;

pub use rules::{ClaimError, Forbidden, Rules};

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one request or connection may do.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The user's limits; `None`: everything the proxy serves.
    pub rules: Option<Arc<Rules>>,
    /// When the credential stops being valid (a JWT's `exp` plus the leeway).
    pub expires: Option<SystemTime>,
    /// The token's `sub`, for logs.
    pub subject: Option<String>,
    /// Whether it may upload WASM filters.
    pub may_upload: bool,
}

impl Grant {
    /// Full access, without expiry.
    pub fn full(may_upload: bool) -> Grant {
        Grant {
            rules: None,
            expires: None,
            subject: None,
            may_upload,
        }
    }

    /// The rules when they limit reads.
    pub fn read_limits(&self) -> Option<&Arc<Rules>> {
        self.rules.as_ref().filter(|r| r.limits_reads())
    }
}

/// Why a credential was not accepted (HTTP 401, close 1008).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credential where one is required.
    Missing,
    /// A credential that is not valid: why.
    Invalid(String),
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Missing => f.write_str(
                "a bearer token is required: Authorization: Bearer <token> or ?access_token=<token>",
            ),
            Denied::Invalid(why) => f.write_str(why),
        }
    }
}

/// Why an upload is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadDenied {
    /// No static token allowed to upload (401).
    NoUploadToken,
    /// A JWT that is not valid (401): why.
    Invalid(String),
    /// A valid JWT whose claim does not allow uploads (403).
    NotAllowed,
}

/// The proxy's credentials.
pub struct Auth {
    tokens: Vec<String>,
    upload_tokens: Vec<String>,
    jwt: Option<jwt::Verifier>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unix(t: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t)
}

impl Auth {
    /// `tokens` grant everything; `upload_tokens` (when given) are the only
    /// static tokens that may upload filters; `jwt` verifies user tokens.
    pub fn new(
        tokens: Vec<String>,
        upload_tokens: Vec<String>,
        jwt: Option<jwt::Verifier>,
    ) -> Auth {
        Auth {
            tokens,
            upload_tokens,
            jwt,
        }
    }

    /// Whether requests need a credential.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }

    fn is_static(list: &[String], token: &str) -> bool {
        list.iter()
            .any(|s| constant_time_eq(s.as_bytes(), token.as_bytes()))
    }

    /// Whether a static token may upload filters: one of
    /// `--filter-upload-token`, or of `--token` when that is not set.
    fn static_upload(&self, token: &str) -> bool {
        if self.upload_tokens.is_empty() {
            Self::is_static(&self.tokens, token)
        } else {
            Self::is_static(&self.upload_tokens, token)
        }
    }

    /// What `credential` grants on the reading endpoints (`/ws`, `/v1/`).
    pub fn check(&self, credential: Option<&str>) -> Result<Grant, Denied> {
        if !self.required() {
            let may_upload =
                self.upload_tokens.is_empty() || credential.is_some_and(|t| self.static_upload(t));
            return Ok(Grant::full(may_upload));
        }
        let Some(token) = credential.filter(|t| !t.is_empty()) else {
            return Err(Denied::Missing);
        };
        if Self::is_static(&self.tokens, token) {
            return Ok(Grant::full(self.static_upload(token)));
        }
        match &self.jwt {
            Some(v) if token.matches('.').count() == 2 => self.jwt_grant(v, token),
            _ => Err(Denied::Invalid("the token is not valid".into())),
        }
    }

    /// Whether `credential` may upload filters (`POST /v1/filters`).
    pub fn check_upload(&self, credential: Option<&str>) -> Result<(), UploadDenied> {
        if credential.is_some_and(|t| !t.is_empty() && self.static_upload(t)) {
            return Ok(());
        }
        if !self.required() && self.upload_tokens.is_empty() {
            return Ok(());
        }
        match credential {
            Some(t) if self.jwt.is_some() && t.matches('.').count() == 2 => {
                match self.check(Some(t)) {
                    Ok(g) if g.may_upload => Ok(()),
                    Ok(_) => Err(UploadDenied::NotAllowed),
                    Err(e) => Err(UploadDenied::Invalid(e.to_string())),
                }
            }
            _ => Err(UploadDenied::NoUploadToken),
        }
    }

    fn jwt_grant(&self, v: &jwt::Verifier, token: &str) -> Result<Grant, Denied> {
        let claims = v
            .verify(token)
            .map_err(|e| Denied::Invalid(e.to_string()))?;
        let Some(claim) = claims.walcast else {
            return Err(Denied::Invalid(
                "the token has no \"walcast\" claim: it must state what the user may read ({} for everything; see docs/security.md)".into(),
            ));
        };
        let claim: rules::Claim = serde_json::from_value(claim)
            .map_err(|e| Denied::Invalid(format!("the token's walcast claim: {e}")))?;
        let rules =
            Rules::from_claim(claim).map_err(|e| Denied::Invalid(format!("the token's {e}")))?;
        Ok(Grant {
            may_upload: rules.upload_filters,
            rules: Some(Arc::new(rules)),
            expires: Some(unix(claims.exp.saturating_add(v.leeway()))),
            subject: claims.sub,
        })
    }

    /// A new token sent on an open websocket (`{"access_token":"..."}`):
    /// the grant that replaces `current`. It must verify and state the same
    /// rules and subject; only its expiry may differ.
    pub fn refresh(&self, current: &Grant, token: &str) -> Result<Grant, RefreshDenied> {
        let next = self.check(Some(token)).map_err(RefreshDenied::Invalid)?;
        if next.rules != current.rules || next.subject != current.subject {
            return Err(RefreshDenied::Changed);
        }
        Ok(next)
    }
}

/// Why a token sent on an open websocket does not replace its grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshDenied {
    /// The new token is not accepted.
    #[error("{0}")]
    Invalid(Denied),
    /// It states another subject or other rules than the connection's.
    #[error(
        "the new token's subject or walcast claim differs from the connection's: reconnect with it"
    )]
    Changed,
}

/// Why a query was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No such table, or not one `--tables` allows (404).
    UnknownTable(String),
    /// The user's rules do not allow it (403).
    Forbidden(String),
    /// The catalog could not be asked (503).
    Unavailable(String),
}

impl Refused {
    /// The code of its websocket error frame.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::UnknownTable(_) => "UNKNOWN_TABLE",
            Refused::Forbidden(_) => "FORBIDDEN",
            Refused::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::UnknownTable(m) | Refused::Forbidden(m) | Refused::Unavailable(m) => {
                f.write_str(m)
            }
        }
    }
}

/// A refresh frame whose `access_token` is not a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"access_token\" must be a string")]
pub struct TokenFrameError;

/// A client frame that carries a new token, if `text` is one.
pub fn refresh_frame(text: &str) -> Option<Result<String, TokenFrameError>> {
    #[derive(serde::Deserialize)]
    struct Frame {
        access_token: serde_json::Value,
    }
    if !text.contains("\"access_token\"") {
        return None;
    }
    let frame: Frame = serde_json::from_str(text).ok()?;
    Some(match frame.access_token {
        serde_json::Value::String(t) => Ok(t),
        _ => Err(TokenFrameError),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_tokens_grant_everything_and_upload_tokens_only_uploads() {
        let auth = Auth::new(vec!["a".into()], vec!["u".into()], None);
        assert_eq!(auth.check(None).err(), Some(Denied::Missing));
        let a = match auth.check(Some("a")) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        };
        assert!(a.rules.is_none() && !a.may_upload);
        assert!(auth.check(Some("u")).is_err());
        assert_eq!(auth.check_upload(Some("u")), Ok(()));
        assert_eq!(
            auth.check_upload(Some("a")),
            Err(UploadDenied::NoUploadToken)
        );
        assert!(auth.check(Some("b")).is_err());
        let open = Auth::new(Vec::new(), Vec::new(), None);
        assert!(open.check(None).is_ok_and(|g| g.may_upload));
        assert_eq!(open.check_upload(None), Ok(()));
        let open_upload = Auth::new(Vec::new(), vec!["u".into()], None);
        assert_eq!(
            open_upload.check_upload(None),
            Err(UploadDenied::NoUploadToken)
        );
        assert_eq!(open_upload.check_upload(Some("u")), Ok(()));
    }

    #[test]
    fn refresh_frames_are_recognised() {
        assert_eq!(refresh_frame(r#"{"lsn":"0/1"}"#), None);
        assert_eq!(
            refresh_frame(r#"{"access_token":"x"}"#),
            Some(Ok("x".into()))
        );
        assert_eq!(
            refresh_frame(r#"{"access_token":5}"#),
            Some(Err(TokenFrameError))
        );
        assert_eq!(
            TokenFrameError.to_string(),
            "\"access_token\" must be a string"
        );
    }
}

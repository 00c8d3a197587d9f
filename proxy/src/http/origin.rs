//! Browsers: which web origins may call `/v1/*` and open websockets
//! (`--allowed-origins`), CORS preflights and headers.
//!
//! A browser sends `Origin` on websocket upgrades and on cross-origin (and
//! most same-origin) requests. A request whose `Origin` is not allowed is
//! refused (403) before anything else happens, so a page on another site
//! cannot use a visitor's network position or token against the proxy.
//! Requests without `Origin` (curl, servers, native apps) are not browsers
//! and pass. The default: any origin when the proxy needs no token (its
//! data is public to whoever reaches it anyway), the proxy's own origin
//! only when it does.

use hyper::header::{HeaderMap, HeaderValue, HOST, ORIGIN};

/// The origins allowed to call the proxy from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Any origin (`--allowed-origins '*'`).
    Any,
    /// Only the proxy's own (the `Origin`'s host and port are the request's `Host`).
    SameOrigin,
    /// These origins (`https://app.example.com`), compared without case,
    /// plus the proxy's own.
    List(Vec<String>),
}

/// What to do with a request, as far as its origin goes.
#[derive(Debug, PartialEq, Eq)]
pub enum OriginCheck {
    /// Not from a browser (no `Origin`): as usual, no CORS headers.
    NoOrigin,
    /// An allowed origin: as usual, answered with CORS headers for it.
    Allowed(HeaderValue),
    /// An origin that is not allowed: 403.
    Refused(String),
}

impl Origins {
    /// The policy for `--allowed-origins` (comma separated, `*` for any);
    /// empty: any origin without tokens, the same origin with them.
    pub fn new(list: &[String], tokens_in_use: bool) -> Origins {
        let list: Vec<String> = list
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        if list.iter().any(|o| o == "*") {
            Origins::Any
        } else if !list.is_empty() {
            Origins::List(list)
        } else if tokens_in_use {
            Origins::SameOrigin
        } else {
            Origins::Any
        }
    }

    /// The verdict on a request's headers.
    pub fn judge(&self, headers: &HeaderMap) -> OriginCheck {
        let Some(origin) = headers.get(ORIGIN) else {
            return OriginCheck::NoOrigin;
        };
        let text = origin.to_str().unwrap_or_default().to_ascii_lowercase();
        let same = || {
            let host = headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase);
            let authority = text.split_once("://").map(|(_, a)| a);
            host.is_some() && authority.is_some() && authority == host.as_deref()
        };
        let allowed = match self {
            Origins::Any => true,
            Origins::SameOrigin => same(),
            Origins::List(list) => list.contains(&text) || same(),
        };
        if allowed {
            OriginCheck::Allowed(origin.clone())
        } else {
            OriginCheck::Refused(format!(
                "the origin {text:?} is not allowed to use this proxy (--allowed-origins)"
            ))
        }
    }
}

/// Adds the CORS answer headers for an allowed `origin`.
pub fn decorate(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert("access-control-allow-origin", origin);
    headers.append("vary", HeaderValue::from_static("Origin"));
    headers.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("x-walcast-rows, x-walcast-after, retry-after, www-authenticate"),
    );
}

/// The headers of a preflight answer (`OPTIONS` with
/// `Access-Control-Request-Method`) for an allowed origin.
pub fn preflight(headers: &mut HeaderMap, origin: HeaderValue) {
    decorate(headers, origin);
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    headers.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("authorization, content-type"),
    );
    headers.insert("access-control-max-age", HeaderValue::from_static("600"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HOST,
            HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("x")),
        );
        if let Some(o) = origin {
            h.insert(
                ORIGIN,
                HeaderValue::from_str(o).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        h
    }

    #[test]
    fn origins_are_judged_by_the_policy() {
        let same = Origins::new(&[], true);
        assert_eq!(same, Origins::SameOrigin);
        assert_eq!(same.judge(&headers(None, "h:8080")), OriginCheck::NoOrigin);
        assert!(matches!(
            same.judge(&headers(Some("http://h:8080"), "h:8080")),
            OriginCheck::Allowed(_)
        ));
        assert!(matches!(
            same.judge(&headers(Some("https://H:8080"), "h:8080")),
            OriginCheck::Allowed(_)
        ));
        assert!(matches!(
            same.judge(&headers(Some("http://evil:8080"), "h:8080")),
            OriginCheck::Refused(_)
        ));
        assert!(matches!(
            same.judge(&headers(Some("null"), "h:8080")),
            OriginCheck::Refused(_)
        ));
        assert_eq!(Origins::new(&[], false), Origins::Any);
        let list = Origins::new(&["https://App.example.com/".into()], true);
        assert!(matches!(
            list.judge(&headers(Some("https://app.example.com"), "h")),
            OriginCheck::Allowed(_)
        ));
        assert!(matches!(
            list.judge(&headers(Some("http://app.example.com"), "h")),
            OriginCheck::Refused(_)
        ));
        assert_eq!(Origins::new(&["*".into()], true), Origins::Any);
    }
}

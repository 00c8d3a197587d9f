//! Who may do what, as the proxy applies it: the credential of a request,
//! the tables and rows a query may read (`admit_query`, over the catalog),
//! and a connection's grant while it is open (`Access`: expiry, refresh).
//! Tokens, JWT claims and row rules themselves are `walcast_core::auth`.
//!
//! A request carries its credential as `Authorization: Bearer <token>` or
//! `?access_token=<token>`. With neither `--token` nor a JWT key, every
//! request has full access.

pub use walcast_core::auth::*;

use crate::frames::{Frame, Typed};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// The credential of a request: the bearer header, else `access_token`.
pub fn credential<'a>(
    headers: &'a hyper::HeaderMap,
    params: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or_else(|| params.get("access_token").map(String::as_str))
}

/// A refused query as the proxy answers it, with its code.
pub fn refusal(r: &Refused) -> crate::refusal::Refusal {
    use crate::refusal::{Kind, Refusal};
    let kind = match r {
        Refused::UnknownTable(_) => Kind::NotFound,
        Refused::Forbidden(_) => Kind::Forbidden,
        Refused::Unavailable(_) => Kind::Unavailable,
    };
    Refusal::new(kind, r.to_string()).code(r.code())
}

/// A client's query as it may have it: its table exists and `--tables`
/// (`tables`) allows it; under a grant whose rules limit reads, a table
/// named without schema is the one the search path finds, and the query
/// is narrowed by the rules ([`Rules::narrow`]).
pub async fn admit_query(
    catalog: &crate::catalog::Catalog,
    tables: Option<&[walcast_format::TablePattern]>,
    grant: &Grant,
    mut query: crate::query::Query,
) -> Result<crate::query::Query, Refused> {
    let name = query.table.name.clone();
    let unknown = || Refused::UnknownTable(format!("unknown table {name:?}"));
    let globally = |schema: Option<&str>| match tables {
        None => true,
        Some(ps) => match schema {
            Some(s) => ps.iter().any(|p| p.matches(s, &name)),
            // A query without schema names the table in any schema.
            None => ps.iter().any(|p| p.matches_table(&name)),
        },
    };
    if !globally(query.table.schema.as_deref()) {
        return Err(unknown());
    }
    let Some(rules) = grant.read_limits() else {
        return match catalog
            .table_exists(query.table.schema.as_deref(), &name)
            .await
        {
            Ok(true) => Ok(query),
            Ok(false) => Err(unknown()),
            Err(e) => Err(Refused::Unavailable(e.to_string())),
        };
    };
    let info = catalog
        .table_info(query.table.schema.as_deref(), &name)
        .await
        .map_err(|e| Refused::Unavailable(e.to_string()))?
        .ok_or_else(unknown)?;
    if !globally(Some(&info.schema)) {
        return Err(unknown());
    }
    query.table.schema = Some(info.schema);
    rules.narrow(query).map_err(|f| Refused::Forbidden(f.0))
}

/// Why a refresh frame ends the connection (1008); its text is the close reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshRefused {
    /// The frame's `access_token` is not a string.
    #[error("{0}")]
    Frame(TokenFrameError),
    /// The new token does not replace the grant.
    #[error("token refresh refused: {0}")]
    Token(RefreshDenied),
}

/// A connection's grant while it is open: checked against the clock, and
/// replaced by refresh frames.
pub struct Access {
    auth: Arc<Auth>,
    grant: Grant,
    /// When the connection must close unless refreshed, on the runtime's
    /// clock: worked out once per grant, not on every wake of the loop.
    deadline: Option<tokio::time::Instant>,
}

/// `expires` on the runtime's clock.
fn deadline_of(expires: Option<SystemTime>) -> Option<tokio::time::Instant> {
    let left = expires?
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Some(tokio::time::Instant::now() + left)
}

impl Access {
    /// A connection holding `grant`.
    pub fn new(auth: Arc<Auth>, grant: Grant) -> Access {
        let deadline = deadline_of(grant.expires);
        Access {
            auth,
            grant,
            deadline,
        }
    }

    /// What the connection may do now.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// When the connection must close unless refreshed (`None`: never).
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// Handles a client text frame: `None` when it is not a refresh,
    /// `Some(Ok(reply))` when the token was replaced, `Some(Err(reason))`
    /// when the connection must close (1008).
    pub fn on_frame(&mut self, text: &str) -> Option<Result<String, RefreshRefused>> {
        let token = match refresh_frame(text)? {
            Ok(t) => t,
            Err(e) => return Some(Err(RefreshRefused::Frame(e))),
        };
        Some(match self.auth.refresh(&self.grant, &token) {
            Ok(next) => {
                self.deadline = deadline_of(next.expires);
                self.grant = next;
                let expires_at = self
                    .grant
                    .expires
                    .and_then(|e| e.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                Ok(Frame::Typed(Typed::Token { expires_at }).text())
            }
            Err(e) => Err(RefreshRefused::Token(e)),
        })
    }
}

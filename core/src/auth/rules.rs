//! What one user may see, from the `walcast` claim of their token:
//! which tables, which actions, which rows (filters in the query syntax,
//! ANDed to every subscription), and whether they may upload filters.
//!
//! The rules are applied where the proxy decides what a client gets: a
//! query is narrowed (its actions, its table, its filters) before it joins
//! the hub, so the rules cost nothing per change beyond the filters
//! themselves; a subscription without a query (a WASM filter over every
//! table) and a durable stream check [`Rules::admits`] on each change
//! before anything else sees it; a snapshot page adds
//! [`Rules::sql_condition`] to its SQL.

use crate::change::Change;
use crate::query::{self, ActionSet, Op, Operand, Query, RowFilter};
use serde::Deserialize;
use walcast_format::TablePattern;

/// One user's limits. `Rules::default()` limits nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Tables the user may subscribe to, snapshot and stream (`None`: all
    /// that `--tables` allows).
    pub tables: Option<Vec<TablePattern>>,
    /// Row filters ANDed to every subscription (empty: every row).
    pub row_filter: Vec<RowFilter>,
    /// The `row_filter` claim as written (for messages and comparisons).
    pub row_filter_text: Option<String>,
    /// Actions the user may receive.
    pub actions: ActionSet,
    /// Whether the user may upload WASM filters.
    pub upload_filters: bool,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            tables: None,
            row_filter: Vec::new(),
            row_filter_text: None,
            actions: ActionSet::ALL,
            upload_filters: false,
        }
    }
}

/// The `walcast` claim of a token, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    #[serde(default)]
    tables: Option<OneOrMany>,
    #[serde(default)]
    row_filter: Option<String>,
    #[serde(default)]
    actions: Option<OneOrMany>,
    #[serde(default)]
    filters: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Why a request is refused under the rules (HTTP 403, close 1008).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden(pub String);

impl std::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which part of a `walcast` claim is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// `tables` is not a list of table patterns.
    #[error("walcast.tables: {0}")]
    Tables(walcast_format::PatternError),
    /// `row_filter` does not parse: where and why.
    #[error("walcast.row_filter: {0}")]
    RowFilter(query::QueryError),
    /// `actions` names something that is not an action: what it names.
    #[error("walcast.actions: {0:?} is not insert, update, delete, truncate or *")]
    Action(String),
}

impl Rules {
    /// The rules a `walcast` claim states; an error says which part is wrong.
    pub fn from_claim(claim: Claim) -> Result<Rules, ClaimError> {
        let tables = match claim.tables {
            None => None,
            Some(t) => {
                let mut patterns = Vec::new();
                for item in t.items() {
                    patterns.extend(TablePattern::parse_list(&item).map_err(ClaimError::Tables)?);
                }
                Some(patterns)
            }
        };
        let row_filter = match &claim.row_filter {
            None => Vec::new(),
            Some(text) => parse_row_filter(text)?,
        };
        let actions = match claim.actions {
            None => ActionSet::ALL,
            Some(a) => {
                let mut set = ActionSet::default();
                for item in a.items() {
                    match item.to_ascii_lowercase().as_str() {
                        "insert" => set.insert = true,
                        "update" => set.update = true,
                        "delete" => set.delete = true,
                        "truncate" => set.truncate = true,
                        "*" => set = ActionSet::ALL,
                        other => return Err(ClaimError::Action(other.to_owned())),
                    }
                }
                set
            }
        };
        Ok(Rules {
            tables,
            row_filter,
            row_filter_text: claim.row_filter,
            actions,
            upload_filters: claim.filters.unwrap_or(false),
        })
    }

    /// Whether the rules limit what the user sees at all (uploads aside).
    pub fn limits_reads(&self) -> bool {
        self.tables.is_some() || !self.row_filter.is_empty() || self.actions != ActionSet::ALL
    }

    /// Whether the user may read `schema.name`.
    pub fn table_allowed(&self, schema: &str, name: &str) -> bool {
        self.tables
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(schema, name)))
    }

    /// `query` as this user may have it: its actions cut to the allowed
    /// ones, the row filters added. Its table must name a schema when the
    /// rules limit tables (resolve it first), so that it cannot match the
    /// same name in another schema.
    pub fn narrow(&self, mut query: Query) -> Result<Query, Forbidden> {
        let a = &mut query.actions;
        let allowed = self.actions;
        a.insert &= allowed.insert;
        a.update &= allowed.update;
        a.delete &= allowed.delete;
        a.truncate &= allowed.truncate;
        if *a == ActionSet::default() {
            return Err(Forbidden(
                "this token does not allow any of the query's actions".into(),
            ));
        }
        if self.tables.is_some() {
            let allowed = match &query.table.schema {
                Some(s) => self.table_allowed(s, &query.table.name),
                None => false,
            };
            if !allowed {
                return Err(Forbidden(format!(
                    "this token does not allow the table {:?}",
                    query.table.name
                )));
            }
        }
        query.filters.extend(self.row_filter.iter().cloned());
        Ok(query)
    }

    /// Whether the user may receive `change`: a row change (inserts,
    /// updates, deletes, truncates; never messages or DDL when the rules
    /// limit reads) of an allowed action and table whose row passes the
    /// row filters. A truncate passes when one of its tables is allowed
    /// (it has no row to filter).
    pub fn admits(&self, change: &Change) -> bool {
        if !self.limits_reads() {
            return true;
        }
        let Some(action) = change.row_action() else {
            return false;
        };
        if !self.actions.contains(action) {
            return false;
        }
        if action == query::RowAction::Truncate {
            return change
                .truncated()
                .iter()
                .any(|(s, t)| self.table_allowed(s, t));
        }
        if !self.table_allowed(&change.schema, &change.table) {
            return false;
        }
        if self.row_filter.is_empty() {
            return true;
        }
        let row = change.row_uncached();
        self.row_filter.iter().all(|f| f.holds(row.as_deref()))
    }

    /// The row filters as a SQL condition on the table aliased `t`, with
    /// their values as text bind parameters appended to `params` (cast to
    /// each column's type in SQL); `None` when there are no row filters.
    /// `column_type` gives a column's `format_type()`, `None` for a column
    /// the table does not have (such a filter holds for no row, but
    /// `is.null`).
    pub fn sql_condition(
        &self,
        column_type: impl Fn(&str) -> Option<String>,
        params: &mut Vec<String>,
    ) -> Option<String> {
        if self.row_filter.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .row_filter
            .iter()
            .map(|f| filter_sql(f, column_type(&f.column), params))
            .collect();
        Some(format!("({})", parts.join(" AND ")))
    }
}

/// One filter as SQL (see [`Rules::sql_condition`]).
pub fn filter_sql(f: &RowFilter, ty: Option<String>, params: &mut Vec<String>) -> String {
    let Some(ty) = ty else {
        return if matches!((f.op, &f.operand), (Op::Is, Operand::Null)) {
            "true".into()
        } else {
            "false".into()
        };
    };
    let col = format!("t.{}", crate::sql::quote_ident(&f.column));
    let mut bind = |v: &str| {
        params.push(v.to_owned());
        format!("${}::text::{ty}", params.len())
    };
    match (f.op, &f.operand) {
        (Op::Is, Operand::Null) => format!("{col} IS NULL"),
        (Op::Is, Operand::NotNull) => format!("{col} IS NOT NULL"),
        (Op::Is, Operand::True | Operand::False) => {
            let want = if f.operand == Operand::True {
                "true"
            } else {
                "false"
            };
            match ty.as_str() {
                "boolean" => format!("{col} IS {}", want.to_ascii_uppercase()),
                // A JSON value is a bool only when it is one.
                "json" | "jsonb" => format!("{col}::text = '{want}'"),
                _ => "false".into(),
            }
        }
        (Op::Eq, Operand::Value(v)) => format!("{col} = {}", bind(v)),
        (Op::Neq, Operand::Value(v)) => format!("{col} <> {}", bind(v)),
        (Op::Lt, Operand::Value(v)) => format!("{col} < {}", bind(v)),
        (Op::Lte, Operand::Value(v)) => format!("{col} <= {}", bind(v)),
        (Op::Gt, Operand::Value(v)) => format!("{col} > {}", bind(v)),
        (Op::Gte, Operand::Value(v)) => format!("{col} >= {}", bind(v)),
        (Op::In, Operand::List(items)) => {
            let binds: Vec<String> = items.iter().map(|v| bind(v)).collect();
            format!("{col} IN ({})", binds.join(", "))
        }
        (Op::Like | Op::ILike, Operand::Pattern(p)) => {
            params.push(p.source.clone());
            let word = if f.op == Op::Like { "LIKE" } else { "ILIKE" };
            format!("{col}::text {word} ${}::text", params.len())
        }
        _ => "false".into(),
    }
}

/// Parses a `row_filter` claim: filters in the query syntax, `:` between
/// them. An error's position is in `text`.
pub fn parse_row_filter(text: &str) -> Result<Vec<RowFilter>, ClaimError> {
    // Parsed as the filters of a query on any table, to share the grammar.
    const HEAD: &str = "*:t:";
    match query::parse(&format!("{HEAD}{text}")) {
        Ok(q) => Ok(q.filters),
        Err(e) => Err(ClaimError::RowFilter(query::QueryError {
            position: e.position.saturating_sub(HEAD.len()),
            ..e
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(claim: serde_json::Value) -> Rules {
        let claim: Claim = match serde_json::from_value(claim) {
            Ok(c) => c,
            Err(e) => panic!("claim: {e}"),
        };
        match Rules::from_claim(claim) {
            Ok(r) => r,
            Err(e) => panic!("rules: {e}"),
        }
    }

    fn query(text: &str) -> Query {
        match query::parse(text) {
            Ok(q) => q,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn narrowing_cuts_actions_pins_tables_and_adds_row_filters() {
        let r = rules(serde_json::json!({
            "tables": ["public.orders", "public.items"],
            "row_filter": "tenant_id.eq.42:deleted.is.false",
            "actions": ["insert", "update"],
        }));
        let q = match r.narrow(query("*:public.orders:total.gt.10")) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        };
        assert!(q.actions.insert && q.actions.update);
        assert!(!q.actions.delete && !q.actions.truncate);
        assert_eq!(q.filters.len(), 3);
        assert_eq!(q.filters[1].column, "tenant_id");
        assert!(r.narrow(query("delete:public.orders")).is_err());
        assert!(r.narrow(query("insert:public.users")).is_err());
        // Without a schema, a query could match the name in any schema.
        assert!(r.narrow(query("insert:orders")).is_err());
    }

    #[test]
    fn claims_with_unknown_fields_or_bad_parts_are_refused() {
        let bad = |v: serde_json::Value| {
            serde_json::from_value::<Claim>(v)
                .map_err(|e| e.to_string())
                .and_then(|c| Rules::from_claim(c).map_err(|e| e.to_string()))
                .is_err()
        };
        assert!(bad(serde_json::json!({"row_filters": "a.eq.1"})));
        assert!(bad(serde_json::json!({"row_filter": "a.zz.1"})));
        assert!(bad(serde_json::json!({"actions": ["upsert"]})));
        assert!(bad(serde_json::json!({"tables": ""})));
        assert!(!bad(serde_json::json!({})));
        let claim = serde_json::json!({"actions": ["insert", "upsert"]});
        let e = serde_json::from_value::<Claim>(claim)
            .map_err(|e| e.to_string())
            .and_then(|c| Rules::from_claim(c).map_err(|e| e.to_string()));
        assert_eq!(
            e.err().as_deref(),
            Some("walcast.actions: \"upsert\" is not insert, update, delete, truncate or *")
        );
        let e = match parse_row_filter("a.eq.1:b.gt.x") {
            Err(e) => e.to_string(),
            Ok(f) => panic!("parsed {f:?}"),
        };
        assert!(e.ends_with("(at position 12)"), "{e}");
    }

    #[test]
    fn row_filters_become_sql_with_bind_parameters() {
        let r = rules(serde_json::json!({
            "row_filter": "tenant_id.eq.42:name.like.\"a'%\":x.in.(1,2):gone.is.null:flag.is.true"
        }));
        let mut params = Vec::new();
        let sql = r.sql_condition(
            |c| {
                (c != "gone").then(|| {
                    match c {
                        "name" => "text",
                        "flag" => "boolean",
                        _ => "integer",
                    }
                    .to_owned()
                })
            },
            &mut params,
        );
        assert_eq!(
            sql.as_deref(),
            Some(
                "(t.\"tenant_id\" = $1::text::integer AND t.\"name\"::text LIKE $2::text \
                 AND t.\"x\" IN ($3::text::integer, $4::text::integer) AND true \
                 AND t.\"flag\" IS TRUE)"
            )
        );
        assert_eq!(params, ["42", "a'%", "1", "2"]);
    }
}

//! The query syntax: which changes a websocket client receives.
//!
//! A query names actions, a table and optional row filters, for example
//! `insert:users`, `insert,update:users:id.eq.5` or
//! `*:public.users:age.gt.30:name.like."A%"`. The simple form
//! (`actions:table:column.eq.value`) is the one Speculare-PGCDC accepts.
//!
//! # Grammar
//!
//! ```text
//! query   = actions ":" table { ":" filter }
//! actions = action { "," action }
//! action  = "insert" | "update" | "delete" | "truncate" | "*"    ("*" = all four)
//! table   = name | name "." name                                 (table, or schema.table)
//! filter  = name "." op "." value
//! op      = "eq" | "neq" | "lt" | "lte" | "gt" | "gte" | "in" | "like" | "ilike" | "is"
//!
//! name    = plain-name | quoted-name
//! plain-name  = [A-Za-z_] [A-Za-z0-9_$]*
//! quoted-name = '"' { any char but '"' | '""' } '"'               (not empty; "" is a quote)
//!
//! value   = text | string                       after eq, neq, lt, lte, gt, gte, like, ilike
//!         | list                                after in
//!         | "null" | "notnull" | "true" | "false"   after is (quoted or not)
//! text    = one or more chars up to the next ":" (no whitespace, no '"'; "." is fine)
//! string  = '"' { char | '\"' | '\\' } '"'      (char: any but '"'; other '\' are kept)
//! list    = "(" item { "," item } ")" | item { "," item }
//! item    = string | one or more chars but "," ":" "(" ")" '"' and whitespace
//! ```
//!
//! - Actions, operators and the four `is` values are case-insensitive. An
//!   action may repeat; `*` combines with anything.
//! - Names keep their case and compare exactly, as the change stream writes
//!   them: `Users` and `users` are different tables. Double-quote a name that
//!   is not a plain name (`"My Table"`, `public."tab.le"`), writing `""` for a
//!   quote inside.
//! - Inside a double-quoted value, `\"` is a quote and `\\` a backslash; any
//!   other backslash is kept, so `"50\%"` is the LIKE pattern `50\%`. Quoted
//!   values may hold `:`, `,`, `.` and whitespace; `""` is the empty string.
//! - Whitespace is not allowed outside double quotes (a query is one URL
//!   parameter).
//! - `lt`, `lte`, `gt` and `gte` need a finite number (quoted or not).
//! - A `like` / `ilike` pattern may not end with a lone `\`.
//! - A query is at most [`MAX_QUERY_LEN`] bytes.
//!
//! Errors are [`QueryError`]s: a [`QueryErrorKind`], a message that says what
//! to do, and the 0-based byte offset where the problem starts.
//!
//! # Matching
//!
//! A change matches when its action is in the query's set, its table matches
//! (a query without schema matches the table in any schema) and every filter
//! holds. Filters look at `columns` for inserts and updates and at `identity`
//! for deletes. A truncate has no row: it matches on its action and on any
//! of the tables it names, and filters are not evaluated for it.
//!
//! What each operator asks of the column's value:
//!
//! - `eq`: equal to the value: numerically for a JSON number (integers
//!   exactly), as `true` / `false` for a bool, as text for a string, as
//!   compact JSON text for an array or object.
//! - `neq`: present, not null, and not `eq` the value.
//! - `lt`, `lte`, `gt`, `gte`: a JSON number, or a string holding a finite
//!   number, that compares so with the value.
//! - `in`: `eq` to one of the items.
//! - `like`, `ilike`: matches the SQL LIKE pattern (`%` any run, `_` one
//!   character, `\` escapes the next one), on a string's content or on the
//!   JSON text of any other value; `ilike` ignores case (Unicode lowercase).
//! - `is`: missing or null (`null`), present and not null (`notnull`), or the
//!   JSON bool `true` / `false`.
//!
//! A missing column or a JSON null makes every filter false except `is.null`:
//! as in SQL, null is neither `eq` nor `neq` to anything. A change without a
//! row makes every filter false.

mod eval;
pub mod like;
mod num;
mod parser;

pub use eval::{RowAction, RowView};
pub use parser::{
    parse, ActionSet, Op, Operand, Query, QueryError, QueryErrorKind, RowFilter, TableRef,
    MAX_QUERY_LEN,
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn row(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn change<'a>(action: RowAction, table: &'a str, row: &'a Map<String, Value>) -> RowView<'a> {
        RowView {
            action,
            schema: "public",
            table,
            truncated: &[],
            row: Some(row),
        }
    }

    #[test]
    fn a_query_text_selects_changes_end_to_end() {
        let q =
            match parse(r#"insert,update:public.users:age.gte.18:name.ilike."a%":id.in.(1,2,3)"#) {
                Ok(q) => q,
                Err(e) => panic!("{e}"),
            };
        let ann = row(json!({"id": 2, "name": "Ann", "age": 31}));
        let bob = row(json!({"id": 3, "name": "Bob", "age": 40}));
        let kid = row(json!({"id": 1, "name": "Al", "age": 9}));
        assert!(q.matches(&change(RowAction::Insert, "users", &ann)));
        assert!(q.matches(&change(RowAction::Update, "users", &ann)));
        assert!(!q.matches(&change(RowAction::Delete, "users", &ann)));
        assert!(!q.matches(&change(RowAction::Insert, "users", &bob)));
        assert!(!q.matches(&change(RowAction::Insert, "users", &kid)));
        assert!(!q.matches(&change(RowAction::Insert, "orders", &ann)));
    }

    #[test]
    fn errors_are_reported_with_kind_message_and_position() {
        let e = match parse("insert:users:age.gt.old") {
            Ok(q) => panic!("parsed as {q:?}"),
            Err(e) => e,
        };
        assert_eq!(e.kind, QueryErrorKind::BadNumber);
        assert_eq!(e.position, 20);
        assert!(e.to_string().ends_with("(at position 20)"), "{e}");
    }
}

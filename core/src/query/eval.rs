//! Evaluation: does one change match a [`Query`]?

use super::num::Num;
use super::parser::{ActionSet, Op, Operand, Query, RowFilter};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::cmp::Ordering;

/// What a change does to rows (the part of [`crate::change::Action`] that
/// queries, row rules and snapshots speak of).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowAction {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// One or more tables were truncated.
    Truncate,
}

impl RowAction {
    /// The action as written in a query (`insert`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RowAction::Insert => "insert",
            RowAction::Update => "update",
            RowAction::Delete => "delete",
            RowAction::Truncate => "truncate",
        }
    }
}

/// What a filter sees of one change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowView<'a> {
    /// The change's action.
    pub action: RowAction,
    /// The changed table's schema (unused for a truncate).
    pub schema: &'a str,
    /// The changed table's name (unused for a truncate, see `truncated`).
    pub table: &'a str,
    /// For a truncate: the `(schema, table)` pairs it names.
    pub truncated: &'a [(String, String)],
    /// The row filters look at: `columns` for an insert or update, `identity`
    /// for a delete; `None` when the change carries none.
    pub row: Option<&'a Map<String, Value>>,
}

impl ActionSet {
    /// Whether `action` is in the set.
    pub fn contains(&self, action: RowAction) -> bool {
        match action {
            RowAction::Insert => self.insert,
            RowAction::Update => self.update,
            RowAction::Delete => self.delete,
            RowAction::Truncate => self.truncate,
        }
    }
}

impl Query {
    /// Whether the client asked for `change`: its action is wanted, its table
    /// matches and every filter holds on its row.
    ///
    /// A truncate has no row: it matches on its action and on any of the
    /// tables it names, and the filters are not evaluated.
    pub fn matches(&self, change: &RowView<'_>) -> bool {
        if !self.wants(change.action) {
            return false;
        }
        if change.action == RowAction::Truncate {
            return change
                .truncated
                .iter()
                .any(|(schema, table)| self.matches_table(schema, table));
        }
        self.matches_table(change.schema, change.table)
            && self.filters.iter().all(|f| f.holds(change.row))
    }

    /// [`Query::matches`] within a bound on the work: filters whose
    /// [`RowFilter::cost`] would take the total past `budget` are not
    /// evaluated, and the answer is `None` (undecided) when one of them
    /// was needed. A filter that fails within the budget still gives
    /// `Some(false)`. `text_bound` is the most bytes any value's text can
    /// have (the change's JSON length).
    pub fn matches_within(
        &self,
        change: &RowView<'_>,
        text_bound: usize,
        budget: usize,
    ) -> Option<bool> {
        if !self.wants(change.action) {
            return Some(false);
        }
        if change.action == RowAction::Truncate || self.filters.is_empty() {
            return Some(self.matches(change));
        }
        if !self.matches_table(change.schema, change.table) {
            return Some(false);
        }
        let Some(row) = change.row else {
            return Some(false);
        };
        let (mut spent, mut undecided) = (0usize, false);
        for f in &self.filters {
            let cost = f.cost(row, text_bound);
            if cost > budget - spent {
                undecided = true;
                continue;
            }
            spent += cost;
            if !f.holds(Some(row)) {
                return Some(false);
            }
        }
        (!undecided).then_some(true)
    }

    /// True when the table part matches schema.table (no schema in the query: any schema).
    ///
    /// Names compare exactly, case included.
    pub fn matches_table(&self, schema: &str, table: &str) -> bool {
        self.table.name == table && self.table.schema.as_deref().is_none_or(|s| s == schema)
    }

    /// Whether the query's actions include `action`.
    pub fn wants(&self, action: RowAction) -> bool {
        self.actions.contains(action)
    }

    /// Whether a change with `action` that this query does not match may
    /// still concern its clients: with row filters, an update can move a
    /// row a client holds out of the query, and a delete (matched on the
    /// old key, which may not hold the filtered columns) can remove one
    /// (`live/view.rs`).
    pub fn may_leave(&self, action: RowAction) -> bool {
        !self.filters.is_empty()
            && matches!(action, RowAction::Update | RowAction::Delete)
            && self.wants(action)
    }
}

impl RowFilter {
    /// Whether the filter holds on `row`.
    ///
    /// No row makes every filter false. A missing column or a JSON null makes
    /// every filter false except `is.null` (true); in particular null is
    /// neither `eq` nor `neq` to anything, as in SQL.
    ///
    /// - `eq`, `neq`, `in`: a JSON number equals an operand that parses as a
    ///   number, numerically (integers exactly, others as `f64`); a bool equals
    ///   `true` / `false` (any case); a string equals the operand's text; an
    ///   array or object equals its compact JSON text. `neq` is "not `eq`" on a
    ///   present, non-null value; `in` is `eq` to any item.
    /// - `lt`, `lte`, `gt`, `gte`: the value must be a JSON number or a string
    ///   holding a finite number (`"NaN"` and `"Infinity"` compare with nothing).
    /// - `like`, `ilike`: SQL LIKE on a string's content, or on the JSON text of
    ///   anything else; `ilike` compares Unicode lowercase forms.
    /// - `is`: `null`, `notnull`, or a JSON bool equal to `true` / `false`.
    ///
    /// An operator paired with an operand the parser never gives it (say
    /// `eq` with a list) is false.
    pub fn holds(&self, row: Option<&Map<String, Value>>) -> bool {
        let Some(row) = row else { return false };
        let value = row.get(&self.column);
        match (self.op, &self.operand) {
            (Op::Is, Operand::Null) => return value.is_none_or(Value::is_null),
            (Op::Is, Operand::NotNull) => return value.is_some_and(|v| !v.is_null()),
            (Op::Is, Operand::True) => return value == Some(&Value::Bool(true)),
            (Op::Is, Operand::False) => return value == Some(&Value::Bool(false)),
            _ => {}
        }
        let Some(v) = value.filter(|v| !v.is_null()) else {
            return false;
        };
        match (self.op, &self.operand) {
            (Op::Eq, Operand::Value(s)) => equals(v, s),
            (Op::Neq, Operand::Value(s)) => !equals(v, s),
            (Op::Lt, Operand::Value(s)) => compare(v, s).is_some_and(Ordering::is_lt),
            (Op::Lte, Operand::Value(s)) => compare(v, s).is_some_and(Ordering::is_le),
            (Op::Gt, Operand::Value(s)) => compare(v, s).is_some_and(Ordering::is_gt),
            (Op::Gte, Operand::Value(s)) => compare(v, s).is_some_and(Ordering::is_ge),
            (Op::In, Operand::List(items)) => items.iter().any(|s| equals(v, s)),
            (Op::Like | Op::ILike, Operand::Pattern(p)) => text(v).is_some_and(|t| p.matches(&t)),
            _ => false,
        }
    }

    /// An estimate of the work [`RowFilter::holds`] does on `row`, in bytes
    /// scanned (times a pattern's words of state), for the filters whose
    /// work grows with the value: `like` and `ilike` (the value's text),
    /// and `lt`, `lte`, `gt`, `gte` on a string (read as a number). Every
    /// other filter costs at most its operand's length, counted as 0.
    /// `text_bound` stands for the text length of an array or object.
    pub fn cost(&self, row: &Map<String, Value>, text_bound: usize) -> usize {
        let Some(v) = row.get(&self.column) else {
            return 0;
        };
        let len = match v {
            Value::String(s) => s.len(),
            Value::Array(_) | Value::Object(_) => text_bound,
            _ => return 0,
        };
        match (self.op, &self.operand) {
            (Op::Like | Op::ILike, Operand::Pattern(p)) => len.saturating_mul(p.work_per_byte()),
            (Op::Lt | Op::Lte | Op::Gt | Op::Gte, _) if v.is_string() => len,
            _ => 0,
        }
    }
}

/// `eq` on a non-null value.
fn equals(v: &Value, s: &str) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => {
            (*b && s.eq_ignore_ascii_case("true")) || (!*b && s.eq_ignore_ascii_case("false"))
        }
        Value::Number(n) => match (Num::of_json(n), Num::parse(s)) {
            (Some(a), Some(b)) => a.compare(b) == Some(Ordering::Equal),
            _ => false,
        },
        Value::String(t) => t == s,
        Value::Array(_) | Value::Object(_) => json_text_is(v, s),
    }
}

/// Whether `v`'s compact JSON text is `s`, written only as far as it agrees
/// with `s`: the work is bounded by `s`, not by the value.
fn json_text_is(v: &Value, s: &str) -> bool {
    struct Compare<'a>(&'a [u8]);
    impl std::io::Write for Compare<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match self.0.strip_prefix(buf) {
                Some(rest) => {
                    self.0 = rest;
                    Ok(buf.len())
                }
                None => Err(std::io::ErrorKind::InvalidData.into()),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut rest = Compare(s.as_bytes());
    serde_json::to_writer(&mut rest, v).is_ok() && rest.0.is_empty()
}

/// The numeric order of a JSON number or numeric string against the operand.
fn compare(v: &Value, s: &str) -> Option<Ordering> {
    let left = match v {
        Value::Number(n) => Num::of_json(n)?,
        Value::String(t) => Num::parse(t)?,
        _ => return None,
    };
    left.compare(Num::parse(s)?)
}

/// The text LIKE looks at: a string's content, the JSON text of anything else.
fn text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(true) => Some(Cow::Borrowed("true")),
        Value::Bool(false) => Some(Cow::Borrowed("false")),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Array(_) | Value::Object(_) => serde_json::to_string(v).ok().map(Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use serde_json::json;

    fn query(q: &str) -> Query {
        match parse(q) {
            Ok(q) => q,
            Err(e) => panic!("{q:?} should parse: {e}"),
        }
    }

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// Whether the one filter of `*:t:<filter>` holds on `row`.
    fn holds(filter: &str, row: Value) -> bool {
        let q = query(&format!("*:t:{filter}"));
        q.filters[0].holds(Some(&map(row)))
    }

    fn view<'a>(
        action: RowAction,
        schema: &'a str,
        table: &'a str,
        row: Option<&'a Map<String, Value>>,
    ) -> RowView<'a> {
        RowView {
            action,
            schema,
            table,
            truncated: &[],
            row,
        }
    }

    #[test]
    fn gt_compares_numbers_and_numeric_strings() {
        assert!(holds("age.gt.30", json!({"age": 31})));
        assert!(holds("age.gt.30", json!({"age": 30.5})));
        assert!(holds("age.gt.30", json!({"age": "31"})));
        assert!(holds("age.gt.30", json!({"age": "3.1e1"})));
        assert!(!holds("age.gt.30", json!({"age": 30})));
        assert!(!holds("age.gt.30", json!({"age": "30"})));
        assert!(!holds("age.gt.30", json!({"age": "abc"})));
        assert!(!holds("age.gt.30", json!({"age": " 31"})));
        assert!(!holds("age.gt.30", json!({"age": true})));
        assert!(!holds("age.gt.30", json!({"age": [31]})));
        assert!(!holds("age.gt.30", json!({"age": null})));
        assert!(!holds("age.gt.30", json!({"other": 31})));
    }

    #[test]
    fn nan_and_infinity_strings_compare_with_nothing() {
        for v in ["NaN", "Infinity", "-Infinity", "inf"] {
            for f in ["n.gt.0", "n.lt.0", "n.gte.0", "n.lte.0"] {
                assert!(!holds(f, json!({ "n": v })), "{f} on {v}");
            }
            assert!(!holds("n.eq.0", json!({ "n": v })));
        }
    }

    #[test]
    fn lt_lte_gte_boundaries() {
        let row = json!({"n": 5});
        assert!(holds("n.lt.6", row.clone()));
        assert!(!holds("n.lt.5", row.clone()));
        assert!(holds("n.lte.5", row.clone()));
        assert!(holds("n.lte.5.0", row.clone()));
        assert!(holds("n.gte.5", row.clone()));
        assert!(!holds("n.gte.5.01", row.clone()));
        assert!(holds("n.gt.-1e3", row));
    }

    #[test]
    fn eq_on_a_float_is_exact_however_many_digits_the_operand_has() {
        // Found by fuzzing: rows were parsed with serde_json's faster,
        // not always correctly rounded, float parser, the operand with the
        // standard one; the same number could differ by one ulp.
        let v: Value = serde_json::from_str("5.666666666666667e40").expect("json");
        assert!(holds(
            "a.eq.56666666666666666666666666666296176666666",
            json!({ "a": v })
        ));
        let v: Value =
            serde_json::from_str("56666666666666666666666666666296176666666").expect("json");
        assert!(holds("a.eq.5.666666666666667e40", json!({ "a": v })));
    }

    #[test]
    fn eq_on_numbers_is_numeric() {
        assert!(holds("n.eq.1", json!({"n": 1})));
        assert!(holds("n.eq.1.0", json!({"n": 1})));
        assert!(holds("n.eq.1", json!({"n": 1.0})));
        assert!(holds("n.eq.1e2", json!({"n": 100})));
        assert!(holds("n.eq.-0.5", json!({"n": -0.5})));
        assert!(!holds("n.eq.2", json!({"n": 1})));
        assert!(!holds("n.eq.abc", json!({"n": 1})));
        assert!(holds("n.neq.abc", json!({"n": 1})));
        assert!(holds("n.neq.2", json!({"n": 1})));
        assert!(!holds("n.neq.1.0", json!({"n": 1})));
    }

    #[test]
    fn eq_on_strings_is_textual() {
        assert!(holds("s.eq.1", json!({"s": "1"})));
        assert!(!holds("s.eq.1.0", json!({"s": "1"})));
        assert!(holds("s.eq.ann", json!({"s": "ann"})));
        assert!(!holds("s.eq.Ann", json!({"s": "ann"})));
        assert!(holds("s.eq.\"\"", json!({"s": ""})));
        assert!(holds("s.eq.\"a:b\"", json!({"s": "a:b"})));
    }

    #[test]
    fn bigint_equality_and_order_are_exact() {
        // 2^53 + 1 is not representable as f64.
        let row = json!({"id": 9_007_199_254_740_993_i64});
        assert!(holds("id.eq.9007199254740993", row.clone()));
        assert!(!holds("id.eq.9007199254740992", row.clone()));
        assert!(holds("id.neq.9007199254740992", row.clone()));
        assert!(holds("id.gt.9007199254740992", row.clone()));
        assert!(holds("id.in.(9007199254740993)", row));
        let row = json!({"id": u64::MAX});
        assert!(holds("id.eq.18446744073709551615", row.clone()));
        assert!(!holds("id.eq.18446744073709551614", row.clone()));
        assert!(holds("id.gt.-9223372036854775808", row));
        let row = json!({"id": i64::MIN});
        assert!(holds("id.eq.-9223372036854775808", row));
        // Numeric strings (say a bigint sent as text) order exactly too.
        assert!(holds(
            "id.lt.9007199254740993",
            json!({"id": "9007199254740992"})
        ));
    }

    #[test]
    fn eq_on_bools_null_and_containers() {
        assert!(holds("b.eq.true", json!({"b": true})));
        assert!(holds("b.eq.TRUE", json!({"b": true})));
        assert!(holds("b.eq.false", json!({"b": false})));
        assert!(!holds("b.eq.false", json!({"b": true})));
        assert!(!holds("b.eq.1", json!({"b": true})));
        assert!(holds("b.neq.false", json!({"b": true})));
        // JSON null is neither equal nor unequal to anything.
        assert!(!holds("x.eq.null", json!({"x": null})));
        assert!(!holds("x.neq.1", json!({"x": null})));
        assert!(!holds("x.neq.1", json!({})));
        assert!(!holds("x.in.(1,null)", json!({"x": null})));
        // Arrays and objects compare their compact JSON text.
        assert!(holds("a.eq.[1,2]", json!({"a": [1, 2]})));
        assert!(!holds("a.eq.[2,1]", json!({"a": [1, 2]})));
        assert!(holds(
            r#"o.eq."{\"k\":1,\"a\":[true]}""#,
            json!({"o": {"k": 1, "a": [true]}})
        ));
        assert!(holds("a.neq.[2,1]", json!({"a": [1, 2]})));
    }

    #[test]
    fn in_lists_match_any_item() {
        assert!(holds("id.in.(1,2,3)", json!({"id": 2})));
        assert!(holds("id.in.(1,2,3)", json!({"id": 3.0})));
        assert!(!holds("id.in.(1,2,3)", json!({"id": 4})));
        assert!(holds("s.in.a,b", json!({"s": "b"})));
        assert!(!holds("s.in.a,b", json!({"s": "c"})));
        assert!(holds("s.in.(\"x,y\",z)", json!({"s": "x,y"})));
        assert!(!holds("s.in.(\"x,y\",z)", json!({"s": "x"})));
        assert!(holds("b.in.(false,true)", json!({"b": true})));
        assert!(!holds("id.in.(1,2)", json!({})));
    }

    #[test]
    fn like_wildcards() {
        assert!(holds("s.like.A%", json!({"s": "Ann"})));
        assert!(holds("s.like.A%", json!({"s": "A"})));
        assert!(!holds("s.like.A%", json!({"s": "bob"})));
        assert!(!holds("s.like.A%", json!({"s": "ann"})));
        assert!(holds("s.like.%nn", json!({"s": "Ann"})));
        assert!(holds("s.like.%n%", json!({"s": "Ann"})));
        assert!(holds("s.like.%", json!({"s": ""})));
        assert!(holds("s.like._nn", json!({"s": "Ann"})));
        assert!(!holds("s.like._nn", json!({"s": "Annn"})));
        assert!(holds("s.like.__", json!({"s": "é😀"})));
        assert!(holds("s.like.%a%b%c", json!({"s": "xxaxxbxxbxc"})));
        assert!(!holds("s.like.%a%b%c", json!({"s": "xxaxxbxxbxcx"})));
        assert!(holds("s.like.a%%_b", json!({"s": "aXb"})));
        assert!(!holds("s.like.a%%_b", json!({"s": "ab"})));
        assert!(holds("s.like.Ann", json!({"s": "Ann"})));
        assert!(!holds("s.like.Ann", json!({"s": "Anna"})));
    }

    #[test]
    fn like_escapes_match_literally() {
        assert!(holds(r"s.like.50\%", json!({"s": "50%"})));
        assert!(!holds(r"s.like.50\%", json!({"s": "500"})));
        assert!(holds(r"s.like.a\_b", json!({"s": "a_b"})));
        assert!(!holds(r"s.like.a\_b", json!({"s": "axb"})));
        assert!(holds(r"s.like.a\\b", json!({"s": r"a\b"})));
        assert!(holds(r#"s.like."a\\\\%""#, json!({"s": r"a\bc"})));
        assert!(holds(r"s.like.\a", json!({"s": "a"})));
    }

    #[test]
    fn like_on_numbers_and_bools_uses_their_json_text() {
        assert!(holds("n.like.12%", json!({"n": 123})));
        assert!(!holds("n.like.12%", json!({"n": 312})));
        assert!(holds("n.like.%.5", json!({"n": 1.5})));
        assert!(holds("b.like.t%", json!({"b": true})));
        assert!(holds("a.like.[%]", json!({"a": [1]})));
        assert!(!holds("x.like.%", json!({"x": null})));
        assert!(!holds("x.like.%", json!({})));
    }

    #[test]
    fn ilike_ignores_case_unicode_included() {
        assert!(holds("s.ilike.a%", json!({"s": "Ann"})));
        assert!(holds("s.ilike.%ÉCOLE%", json!({"s": "une école"})));
        assert!(holds("s.ilike.straße", json!({"s": "STRAßE"})));
        assert!(!holds("s.like.a%", json!({"s": "Ann"})));
        assert!(!holds("s.ilike.b%", json!({"s": "Ann"})));
    }

    #[test]
    fn is_null_holds_for_missing_columns_and_json_null() {
        assert!(holds("x.is.null", json!({})));
        assert!(holds("x.is.null", json!({"x": null})));
        assert!(!holds("x.is.null", json!({"x": 0})));
        assert!(!holds("x.is.null", json!({"x": ""})));
        assert!(holds("x.is.notnull", json!({"x": 0})));
        assert!(!holds("x.is.notnull", json!({"x": null})));
        assert!(!holds("x.is.notnull", json!({})));
    }

    #[test]
    fn is_true_and_false_need_json_bools() {
        assert!(holds("b.is.true", json!({"b": true})));
        assert!(!holds("b.is.true", json!({"b": false})));
        assert!(!holds("b.is.true", json!({"b": "true"})));
        assert!(!holds("b.is.true", json!({"b": 1})));
        assert!(holds("b.is.false", json!({"b": false})));
        assert!(!holds("b.is.false", json!({"b": null})));
        assert!(!holds("b.is.false", json!({})));
    }

    #[test]
    fn no_row_makes_every_filter_false() {
        for f in ["x.is.null", "x.is.notnull", "x.eq.1", "x.neq.1", "x.like.%"] {
            let q = query(&format!("*:t:{f}"));
            assert!(!q.filters[0].holds(None), "{f}");
            assert!(
                !q.matches(&view(RowAction::Update, "public", "t", None)),
                "{f}"
            );
        }
        // Without filters, a change with no row still matches.
        assert!(query("*:t").matches(&view(RowAction::Delete, "public", "t", None)));
    }

    #[test]
    fn filters_are_anded() {
        let q = query("*:t:a.eq.1:b.gt.2");
        let yes = map(json!({"a": 1, "b": 3}));
        let no = map(json!({"a": 1, "b": 2}));
        assert!(q.matches(&view(RowAction::Insert, "public", "t", Some(&yes))));
        assert!(!q.matches(&view(RowAction::Insert, "public", "t", Some(&no))));
    }

    #[test]
    fn delete_is_matched_on_its_identity() {
        let q = query("delete:users:id.eq.5");
        let identity = map(json!({"id": 5}));
        let other = map(json!({"id": 6}));
        assert!(q.matches(&view(RowAction::Delete, "public", "users", Some(&identity))));
        assert!(!q.matches(&view(RowAction::Delete, "public", "users", Some(&other))));
    }

    #[test]
    fn truncate_matches_by_its_table_list_without_filters() {
        let truncated = vec![
            ("public".to_owned(), "a".to_owned()),
            ("audit".to_owned(), "users".to_owned()),
        ];
        let change = RowView {
            action: RowAction::Truncate,
            schema: "",
            table: "",
            truncated: &truncated,
            row: None,
        };
        assert!(query("truncate:users").matches(&change));
        assert!(query("truncate:audit.users").matches(&change));
        assert!(query("*:a").matches(&change));
        // Filters are not evaluated: a truncate has no row.
        assert!(query("*:users:id.eq.5").matches(&change));
        assert!(!query("truncate:public.users").matches(&change));
        assert!(!query("truncate:b").matches(&change));
        assert!(!query("insert,update,delete:users").matches(&change));
        let none = RowView {
            truncated: &[],
            ..change
        };
        assert!(!query("truncate:users").matches(&none));
    }

    #[test]
    fn a_table_without_schema_matches_any_schema() {
        let q = query("insert:users");
        assert!(q.matches_table("public", "users"));
        assert!(q.matches_table("audit", "users"));
        assert!(!q.matches_table("public", "user"));
        assert!(!q.matches_table("public", "Users"));
        let q = query("insert:audit.users");
        assert!(q.matches_table("audit", "users"));
        assert!(!q.matches_table("public", "users"));
        assert!(!q.matches(&view(RowAction::Insert, "public", "users", None)));
        assert!(q.matches(&view(RowAction::Insert, "audit", "users", None)));
        let q = query(r#"insert:"My Schema"."My ""T""""#);
        assert!(q.matches_table("My Schema", "My \"T\""));
    }

    #[test]
    fn filters_do_not_leak_to_other_actions() {
        let q = query("insert:users:id.eq.5");
        let row = map(json!({"id": 5}));
        assert!(q.matches(&view(RowAction::Insert, "public", "users", Some(&row))));
        for action in [RowAction::Update, RowAction::Delete, RowAction::Truncate] {
            assert!(!q.wants(action), "{}", action.as_str());
            assert!(
                !q.matches(&view(action, "public", "users", Some(&row))),
                "{}",
                action.as_str()
            );
        }
        let q = query("update,delete:users:id.eq.5");
        let other = map(json!({"id": 6}));
        assert!(!q.matches(&view(RowAction::Update, "public", "users", Some(&other))));
        assert!(!q.matches(&view(RowAction::Delete, "public", "users", Some(&other))));
        assert!(!q.matches(&view(RowAction::Insert, "public", "users", Some(&row))));
        // Another table's row with the same values does not match either.
        assert!(!q.matches(&view(RowAction::Update, "public", "orders", Some(&row))));
    }

    #[test]
    fn wants_follows_the_action_set() {
        let q = query("*:t");
        for a in [
            RowAction::Insert,
            RowAction::Update,
            RowAction::Delete,
            RowAction::Truncate,
        ] {
            assert!(q.wants(a));
        }
        let q = query("update,truncate:t");
        assert!(!q.wants(RowAction::Insert) && q.wants(RowAction::Update));
        assert!(!q.wants(RowAction::Delete) && q.wants(RowAction::Truncate));
    }

    #[test]
    fn mismatched_operator_and_operand_is_false() {
        let f = RowFilter {
            column: "x".into(),
            op: Op::Eq,
            operand: Operand::List(vec!["1".into()]),
        };
        assert!(!f.holds(Some(&map(json!({"x": 1})))));
        let f = RowFilter {
            column: "x".into(),
            op: Op::Lt,
            operand: Operand::Null,
        };
        assert!(!f.holds(Some(&map(json!({"x": 1})))));
    }

    #[test]
    fn numbers_parse_as_integers_or_finite_floats() {
        assert_eq!(Num::parse("42"), Some(Num::Int(42)));
        assert_eq!(Num::parse("-7"), Some(Num::Int(-7)));
        assert_eq!(Num::parse("1.5"), Some(Num::Float(1.5)));
        assert_eq!(Num::parse("NaN"), None);
        assert_eq!(Num::parse("Infinity"), None);
        assert_eq!(Num::parse("1e999"), None);
        assert_eq!(Num::parse(""), None);
        assert_eq!(Num::parse("12abc"), None);
    }
}

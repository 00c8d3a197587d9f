//! The query parser: query text to [`Query`], or a [`QueryError`] that says
//! what is wrong, where, and how to fix it.

use super::num::Num;
use std::fmt;
use std::str::FromStr;

/// The longest accepted query, in bytes; longer input is a
/// [`QueryErrorKind::TooLong`] error.
pub const MAX_QUERY_LEN: usize = 4096;

/// The operator names, as error messages list them.
const OPERATORS: &str = "eq, neq, lt, lte, gt, gte, in, like, ilike, is";

/// A parsed query: which actions, on which table, with which row filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The actions the client wants.
    pub actions: ActionSet,
    /// The table the client wants.
    pub table: TableRef,
    /// Row filters, all of which must hold (AND); empty means every row.
    pub filters: Vec<RowFilter>,
}

/// A set of actions; `*` in a query sets all four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ActionSet {
    /// Inserts are wanted.
    pub insert: bool,
    /// Updates are wanted.
    pub update: bool,
    /// Deletes are wanted.
    pub delete: bool,
    /// Truncates are wanted.
    pub truncate: bool,
}

impl ActionSet {
    /// All four actions (what `*` means).
    pub const ALL: ActionSet = ActionSet {
        insert: true,
        update: true,
        delete: true,
        truncate: true,
    };
}

/// The table part of a query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRef {
    /// The schema, when the query names one; `None` matches any schema.
    pub schema: Option<String>,
    /// The table name, unquoted (`"My ""T"""` is stored as `My "T"`).
    pub name: String,
}

/// One row filter: `column.op.value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFilter {
    /// The column name, unquoted.
    pub column: String,
    /// The comparison.
    pub op: Op,
    /// What the column is compared with.
    pub operand: Operand,
}

/// A filter's comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `eq`: equal.
    Eq,
    /// `neq`: present, not null and not equal.
    Neq,
    /// `lt`: numerically less than.
    Lt,
    /// `lte`: numerically less than or equal.
    Lte,
    /// `gt`: numerically greater than.
    Gt,
    /// `gte`: numerically greater than or equal.
    Gte,
    /// `in`: equal to one of a list.
    In,
    /// `like`: SQL LIKE pattern (`%`, `_`, `\` escapes).
    Like,
    /// `ilike`: case-insensitive `like`.
    ILike,
    /// `is`: null, notnull, true or false.
    Is,
}

impl Op {
    /// The operator as written in a query (`eq`, `ilike`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Like => "like",
            Op::ILike => "ilike",
            Op::Is => "is",
        }
    }

    /// The operator named `name`, case-insensitively.
    fn from_name(name: &str) -> Option<Op> {
        Some(match name.to_ascii_lowercase().as_str() {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            "like" => Op::Like,
            "ilike" => Op::ILike,
            "is" => Op::Is,
            _ => return None,
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a filter compares a column with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// One value, unquoted (every operator but `in`, `is`, `like` and `ilike`).
    Value(String),
    /// A `like` or `ilike` pattern, compiled.
    Pattern(super::like::Like),
    /// The values of an `in` list, unquoted; never empty.
    List(Vec<String>),
    /// `is.null`.
    Null,
    /// `is.notnull`.
    NotNull,
    /// `is.true`.
    True,
    /// `is.false`.
    False,
}

/// What kind of problem a [`QueryError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryErrorKind {
    /// The text does not follow the grammar.
    Syntax,
    /// An action is not insert, update, delete, truncate or `*`.
    UnknownAction,
    /// An operator is not one of the known ones.
    UnknownOperator,
    /// `lt`, `lte`, `gt` or `gte` was given something that is not a finite number.
    BadNumber,
    /// An `in` list has no items.
    EmptyList,
    /// The query is longer than [`MAX_QUERY_LEN`] bytes.
    TooLong,
}

/// Why a query was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at position {position})")]
pub struct QueryError {
    /// What kind of problem it is.
    pub kind: QueryErrorKind,
    /// What is wrong and what to do about it.
    pub message: String,
    /// The 0-based byte offset in the query where the problem starts.
    pub position: usize,
}

fn error(kind: QueryErrorKind, position: usize, message: impl Into<String>) -> QueryError {
    QueryError {
        kind,
        message: message.into(),
        position,
    }
}

fn syntax(position: usize, message: impl Into<String>) -> QueryError {
    error(QueryErrorKind::Syntax, position, message)
}

fn whitespace(position: usize) -> QueryError {
    syntax(
        position,
        "whitespace is not allowed outside double quotes: remove it, or double-quote the value \
        that holds it",
    )
}

/// Parses a query such as `insert,update:public.users:age.gt.30`.
pub fn parse(input: &str) -> Result<Query, QueryError> {
    if input.len() > MAX_QUERY_LEN {
        // The first byte past the limit, moved back to the start of its
        // character so that the position is one a client can slice at.
        let at = (0..=MAX_QUERY_LEN)
            .rev()
            .find(|&i| input.is_char_boundary(i))
            .unwrap_or(0);
        return Err(error(
            QueryErrorKind::TooLong,
            at,
            format!(
                "the query is {} bytes, over the limit of {MAX_QUERY_LEN}: shorten it (fewer \
                filters, shorter values)",
                input.len()
            ),
        ));
    }
    let mut p = Parser { input, pos: 0 };
    let actions = p.actions()?;
    if !p.eat(':') {
        return Err(syntax(
            p.pos,
            "missing table: add :table after the actions (e.g. insert:users or \
            insert:public.users)",
        ));
    }
    let table = p.table()?;
    let mut filters = Vec::new();
    while p.eat(':') {
        filters.push(p.filter()?);
    }
    Ok(Query {
        actions,
        table,
        filters,
    })
}

impl FromStr for Query {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Query, QueryError> {
        parse(s)
    }
}

/// A cursor over the query; `pos` is always on a char boundary.
struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.input.get(self.pos..).and_then(|s| s.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c);
        if hit {
            self.pos += c.len_utf8();
        }
        hit
    }

    /// True at the end of the query or at the `:` that ends a part.
    fn at_part_end(&self) -> bool {
        matches!(self.peek(), None | Some(':'))
    }

    fn slice(&self, start: usize) -> &'a str {
        self.input.get(start..self.pos).unwrap_or_default()
    }

    /// Reads up to (not including) a char for which `stop` holds, or the end;
    /// whitespace on the way is an error.
    fn word(&mut self, stop: impl Fn(char) -> bool) -> Result<&'a str, QueryError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if stop(c) {
                break;
            }
            if c.is_whitespace() {
                return Err(whitespace(self.pos));
            }
            self.pos += c.len_utf8();
        }
        Ok(self.slice(start))
    }

    fn actions(&mut self) -> Result<ActionSet, QueryError> {
        if self.at_part_end() {
            return Err(syntax(
                self.pos,
                "missing actions: start the query with insert, update, delete, truncate or * \
                (e.g. insert:users)",
            ));
        }
        let mut set = ActionSet::default();
        loop {
            let start = self.pos;
            let word = self.word(|c| c == ',' || c == ':')?;
            match word.to_ascii_lowercase().as_str() {
                "" => {
                    return Err(syntax(
                        start,
                        "missing action: write insert, update, delete, truncate or * between the \
                        commas",
                    ))
                }
                "insert" => set.insert = true,
                "update" => set.update = true,
                "delete" => set.delete = true,
                "truncate" => set.truncate = true,
                "*" => set = ActionSet::ALL,
                _ => {
                    return Err(error(
                        QueryErrorKind::UnknownAction,
                        start,
                        format!(
                            "unknown action {word:?}: use insert, update, delete, truncate or *, \
                            comma-separated (e.g. insert,update:users)"
                        ),
                    ))
                }
            }
            if !self.eat(',') {
                return Ok(set);
            }
        }
    }

    fn table(&mut self) -> Result<TableRef, QueryError> {
        if self.at_part_end() {
            return Err(syntax(
                self.pos,
                "missing table: write a table name after the actions (e.g. insert:users or \
                insert:public.users)",
            ));
        }
        let first = self.name("table", "missing table name: write table or schema.table")?;
        let table = if self.eat('.') {
            let name = self.name(
                "table",
                "missing table name after the '.': write schema.table (e.g. public.users)",
            )?;
            TableRef {
                schema: Some(first),
                name,
            }
        } else {
            TableRef {
                schema: None,
                name: first,
            }
        };
        match self.peek() {
            None | Some(':') => Ok(table),
            Some('.') => Err(syntax(
                self.pos,
                "too many dots in the table: write table or schema.table, and double-quote names \
                that hold dots",
            )),
            Some(c) if c.is_whitespace() => Err(whitespace(self.pos)),
            Some(c) => Err(syntax(
                self.pos,
                format!(
                    "unexpected {c:?} after the table name: plain names hold letters, digits, _ \
                    and $ (double-quote other names); filters follow a ':'"
                ),
            )),
        }
    }

    /// A plain or double-quoted name; `missing` is the message when there is none.
    fn name(&mut self, what: &str, missing: &str) -> Result<String, QueryError> {
        let start = self.pos;
        match self.peek() {
            Some('"') => self.quoted_name(what),
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                self.pos += 1;
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '$' {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                Ok(self.slice(start).to_owned())
            }
            None | Some(':' | '.') => Err(syntax(start, missing)),
            Some(c) if c.is_whitespace() => Err(whitespace(start)),
            Some(c) => Err(syntax(
                start,
                format!(
                    "unexpected {c:?} at the start of the {what} name: plain names start with a \
                    letter or _; double-quote other names (e.g. \"2024 sales\")"
                ),
            )),
        }
    }

    /// `"..."` with `""` for a quote; the cursor is on the opening quote.
    fn quoted_name(&mut self, what: &str) -> Result<String, QueryError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(syntax(
                        open,
                        format!(
                            "unterminated quoted {what} name: close it with \" (write \"\" for a \
                            quote inside)"
                        ),
                    ))
                }
                Some('"') if self.eat('"') => out.push('"'),
                Some('"') => break,
                Some(c) => out.push(c),
            }
        }
        if out.is_empty() {
            return Err(syntax(
                open,
                format!("empty quoted {what} name: put the name between the quotes"),
            ));
        }
        Ok(out)
    }

    fn filter(&mut self) -> Result<RowFilter, QueryError> {
        if self.at_part_end() {
            return Err(syntax(
                self.pos,
                "empty filter: write column.op.value after the ':' (e.g. id.eq.5), or remove the \
                ':'",
            ));
        }
        let column = self.name(
            "column",
            "missing column: write column.op.value (e.g. id.eq.5)",
        )?;
        match self.peek() {
            Some('.') => self.pos += 1,
            None | Some(':') => return Err(missing_operator(self.pos)),
            Some(c) if c.is_whitespace() => return Err(whitespace(self.pos)),
            Some(c) => {
                return Err(syntax(
                    self.pos,
                    format!(
                        "unexpected {c:?} after the column name: write column.op.value, and \
                        double-quote column names that hold other characters"
                    ),
                ))
            }
        }
        let op_start = self.pos;
        let word = self.word(|c| c == '.' || c == ':')?;
        if word.is_empty() {
            return Err(missing_operator(op_start));
        }
        let op = Op::from_name(word).ok_or_else(|| {
            error(
                QueryErrorKind::UnknownOperator,
                op_start,
                format!("unknown operator {word:?}: use one of {OPERATORS}"),
            )
        })?;
        if !self.eat('.') {
            return Err(missing_value(op, self.pos));
        }
        let operand = if op == Op::In {
            Operand::List(self.list()?)
        } else {
            let at = self.pos;
            let value = self.value(op)?;
            operand(op, value, at)?
        };
        Ok(RowFilter {
            column,
            op,
            operand,
        })
    }

    /// A single value: a double-quoted string or plain text up to the next `:`.
    fn value(&mut self, op: Op) -> Result<String, QueryError> {
        let start = self.pos;
        match self.peek() {
            None | Some(':') => Err(missing_value(op, start)),
            Some('"') => {
                let value = self.quoted_value()?;
                match self.peek() {
                    None | Some(':') => Ok(value),
                    Some(c) => Err(syntax(
                        self.pos,
                        format!(
                            "unexpected {c:?} after the closing quote: put the whole value inside \
                            the quotes, or start the next filter with ':'"
                        ),
                    )),
                }
            }
            Some(_) => {
                while let Some(c) = self.peek() {
                    match c {
                        ':' => break,
                        '"' => {
                            return Err(syntax(
                                self.pos,
                                "unexpected '\"' inside an unquoted value: double-quote the whole \
                                value and write \\\" for a quote inside",
                            ))
                        }
                        c if c.is_whitespace() => return Err(whitespace(self.pos)),
                        c => self.pos += c.len_utf8(),
                    }
                }
                Ok(self.slice(start).to_owned())
            }
        }
    }

    /// `"..."` with `\"` and `\\` as escapes (any other `\` is kept); the cursor
    /// is on the opening quote.
    fn quoted_value(&mut self) -> Result<String, QueryError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(syntax(
                        open,
                        "unterminated quoted value: close it with \" (inside, write \\\" for a \
                        quote and \\\\ for a backslash)",
                    ))
                }
                Some('"') => return Ok(out),
                Some('\\') => match self.peek() {
                    Some(c @ ('"' | '\\')) => {
                        self.pos += 1;
                        out.push(c);
                    }
                    _ => out.push('\\'),
                },
                Some(c) => out.push(c),
            }
        }
    }

    /// An `in` list: `(a,b,c)` or `a,b,c`, items plain or double-quoted.
    fn list(&mut self) -> Result<Vec<String>, QueryError> {
        let start = self.pos;
        let empty = || {
            error(
                QueryErrorKind::EmptyList,
                start,
                "empty in list: give at least one value (e.g. id.in.(1,2,3))",
            )
        };
        if self.at_part_end() {
            return Err(empty());
        }
        let parens = self.eat('(');
        if parens && self.peek() == Some(')') {
            return Err(empty());
        }
        if parens && self.at_part_end() {
            return Err(unclosed(start));
        }
        let mut items = Vec::new();
        loop {
            items.push(self.item(parens)?);
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') if parens => {
                    self.pos += 1;
                    break;
                }
                None | Some(':') if parens => return Err(unclosed(start)),
                None | Some(':') => break,
                Some(c) => {
                    return Err(syntax(
                        self.pos,
                        format!(
                            "unexpected {c:?} after a quoted list item: separate items with ',' \
                            and put the whole item inside the quotes"
                        ),
                    ))
                }
            }
        }
        match self.peek() {
            None | Some(':') => Ok(items),
            Some(c) => Err(syntax(
                self.pos,
                format!(
                    "unexpected {c:?} after the closing ')': end the filter there, or start the \
                    next one with ':'"
                ),
            )),
        }
    }

    /// One `in` list item; `parens` says whether `)` ends it.
    fn item(&mut self, parens: bool) -> Result<String, QueryError> {
        if self.peek() == Some('"') {
            return self.quoted_value();
        }
        let start = self.pos;
        while let Some(c) = self.peek() {
            match c {
                ',' | ':' => break,
                ')' if parens => break,
                '(' | ')' => {
                    return Err(syntax(
                        self.pos,
                        format!(
                            "unexpected {c:?} in a list item: double-quote items that hold \
                            parentheses"
                        ),
                    ))
                }
                '"' => {
                    return Err(syntax(
                        self.pos,
                        "unexpected '\"' inside an unquoted list item: double-quote the whole \
                        item and write \\\" for a quote inside",
                    ))
                }
                c if c.is_whitespace() => return Err(whitespace(self.pos)),
                c => self.pos += c.len_utf8(),
            }
        }
        if self.pos == start {
            return Err(syntax(
                start,
                "empty item in the in list: remove the extra ',' or write \"\" for an empty string",
            ));
        }
        Ok(self.slice(start).to_owned())
    }
}

fn unclosed(position: usize) -> QueryError {
    syntax(
        position,
        "unclosed '(' in the in list: close it with ')' (e.g. id.in.(1,2,3))",
    )
}

fn missing_operator(position: usize) -> QueryError {
    syntax(
        position,
        format!("missing operator: write column.op.value with op one of {OPERATORS}"),
    )
}

fn missing_value(op: Op, position: usize) -> QueryError {
    let message = match op {
        Op::In => "missing list: write column.in.(a,b,c)".to_owned(),
        Op::Is => "missing value: write column.is.null (or notnull, true, false)".to_owned(),
        _ => format!(
            "missing value: write column.{op}.value (for an empty string: column.{op}.\"\")"
        ),
    };
    syntax(position, message)
}

/// Checks a single value against its operator; `at` is where the value starts.
fn operand(op: Op, value: String, at: usize) -> Result<Operand, QueryError> {
    match op {
        Op::Lt | Op::Lte | Op::Gt | Op::Gte if Num::parse(&value).is_none() => Err(error(
            QueryErrorKind::BadNumber,
            at,
            format!(
                "{op} compares numbers and {value:?} is not one: give a finite number (e.g. \
                age.{op}.30)"
            ),
        )),
        Op::Is => match value.to_ascii_lowercase().as_str() {
            "null" => Ok(Operand::Null),
            "notnull" => Ok(Operand::NotNull),
            "true" => Ok(Operand::True),
            "false" => Ok(Operand::False),
            _ => Err(syntax(
                at,
                format!(
                    "is takes null, notnull, true or false, not {value:?}: use eq to compare \
                    with other values"
                ),
            )),
        },
        Op::Like | Op::ILike if ends_with_lone_escape(&value) => Err(syntax(
            at,
            format!(
                "the {op} pattern ends with a lone \\: escape a literal backslash as \\\\ (and %, \
                _ as \\%, \\_)"
            ),
        )),
        Op::Like | Op::ILike => Ok(Operand::Pattern(super::like::Like::new(
            &value,
            op == Op::ILike,
        ))),
        _ => Ok(Operand::Value(value)),
    }
}

/// True when a LIKE pattern's last `\` escapes nothing.
fn ends_with_lone_escape(pattern: &str) -> bool {
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.next().is_none() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> Query {
        match parse(input) {
            Ok(q) => q,
            Err(e) => panic!("{input:?} should parse: {e}"),
        }
    }

    fn err(input: &str) -> QueryError {
        match parse(input) {
            Ok(q) => panic!("{input:?} should fail, parsed as {q:?}"),
            Err(e) => e,
        }
    }

    fn value(v: &str) -> Operand {
        Operand::Value(v.to_owned())
    }

    fn list(items: &[&str]) -> Operand {
        Operand::List(items.iter().map(|s| (*s).to_owned()).collect())
    }

    fn pattern(p: &str, fold_case: bool) -> Operand {
        Operand::Pattern(super::super::like::Like::new(p, fold_case))
    }

    fn filter(column: &str, op: Op, operand: Operand) -> RowFilter {
        RowFilter {
            column: column.to_owned(),
            op,
            operand,
        }
    }

    fn only_filter(input: &str) -> RowFilter {
        let mut q = ok(input);
        assert_eq!(q.filters.len(), 1, "{input:?}");
        q.filters.remove(0)
    }

    #[test]
    fn speculare_single_action_and_table() {
        let q = ok("insert:users");
        assert_eq!(
            q,
            Query {
                actions: ActionSet {
                    insert: true,
                    ..ActionSet::default()
                },
                table: TableRef {
                    schema: None,
                    name: "users".into()
                },
                filters: vec![],
            }
        );
    }

    #[test]
    fn speculare_two_actions_and_an_eq_filter() {
        let q = ok("insert,update:users:id.eq.5");
        assert_eq!(
            q.actions,
            ActionSet {
                insert: true,
                update: true,
                ..ActionSet::default()
            }
        );
        assert_eq!(
            q.table,
            TableRef {
                schema: None,
                name: "users".into()
            }
        );
        assert_eq!(q.filters, vec![filter("id", Op::Eq, value("5"))]);
    }

    #[test]
    fn star_schema_table_and_several_filters() {
        let q = ok("*:public.users:age.gt.30:name.like.\"A%\"");
        assert_eq!(q.actions, ActionSet::ALL);
        assert_eq!(
            q.table,
            TableRef {
                schema: Some("public".into()),
                name: "users".into()
            }
        );
        assert_eq!(
            q.filters,
            vec![
                filter("age", Op::Gt, value("30")),
                filter("name", Op::Like, pattern("A%", false))
            ]
        );
    }

    #[test]
    fn actions_are_case_insensitive_and_may_repeat() {
        let q = ok("INSERT,Delete,insert,TrUnCaTe:users");
        assert_eq!(
            q.actions,
            ActionSet {
                insert: true,
                update: false,
                delete: true,
                truncate: true
            }
        );
        assert_eq!(ok("insert,*:t").actions, ActionSet::ALL);
    }

    #[test]
    fn every_operator_parses_case_insensitively() {
        for (name, op) in [
            ("eq", Op::Eq),
            ("neq", Op::Neq),
            ("lt", Op::Lt),
            ("lte", Op::Lte),
            ("gt", Op::Gt),
            ("GTE", Op::Gte),
            ("Like", Op::Like),
            ("ilike", Op::ILike),
        ] {
            let f = only_filter(&format!("*:t:c.{name}.1"));
            let want = match op {
                Op::Like | Op::ILike => pattern("1", op == Op::ILike),
                _ => value("1"),
            };
            assert_eq!(f, filter("c", op, want));
            assert_eq!(op.to_string(), name.to_ascii_lowercase());
        }
    }

    #[test]
    fn plain_values_run_to_the_next_colon_and_keep_dots() {
        assert_eq!(
            only_filter("*:t:price.eq.1.5"),
            filter("price", Op::Eq, value("1.5"))
        );
        assert_eq!(
            only_filter("*:t:email.eq.ann@example.com"),
            filter("email", Op::Eq, value("ann@example.com"))
        );
        assert_eq!(
            only_filter("*:t:n.eq.(1)"),
            filter("n", Op::Eq, value("(1)"))
        );
        assert_eq!(
            only_filter("*:t:n.eq.José"),
            filter("n", Op::Eq, value("José"))
        );
        let q = ok("*:t:a.eq.x.y:b.neq.z");
        assert_eq!(
            q.filters,
            vec![
                filter("a", Op::Eq, value("x.y")),
                filter("b", Op::Neq, value("z"))
            ]
        );
    }

    #[test]
    fn quoted_values_hold_colons_commas_dots_and_escapes() {
        assert_eq!(
            only_filter(r#"*:t:note.eq."a:b,c.d e""#),
            filter("note", Op::Eq, value("a:b,c.d e"))
        );
        assert_eq!(
            only_filter(r#"*:t:note.eq."say \"hi\" \\ bye""#),
            filter("note", Op::Eq, value(r#"say "hi" \ bye"#))
        );
        assert_eq!(
            only_filter(r#"*:t:note.eq."""#),
            filter("note", Op::Eq, value(""))
        );
        // A backslash before anything else is kept, so LIKE escapes need no doubling.
        assert_eq!(
            only_filter(r#"*:t:note.like."50\%""#),
            filter("note", Op::Like, pattern(r"50\%", false))
        );
        let q = ok(r#"*:t:a.eq."x:y":b.eq.z"#);
        assert_eq!(q.filters.len(), 2);
    }

    #[test]
    fn quoted_identifiers_in_table_schema_and_column() {
        let q = ok(r#"insert:"My Schema"."My ""Table""":"first name".eq.x"#);
        assert_eq!(
            q.table,
            TableRef {
                schema: Some("My Schema".into()),
                name: "My \"Table\"".into()
            }
        );
        assert_eq!(q.filters, vec![filter("first name", Op::Eq, value("x"))]);
        let q = ok(r#"insert:public."tab.le:x""#);
        assert_eq!(
            q.table,
            TableRef {
                schema: Some("public".into()),
                name: "tab.le:x".into()
            }
        );
        assert_eq!(ok("insert:_t$1").table.name, "_t$1");
        // Names keep their case.
        assert_eq!(ok("insert:Users").table.name, "Users");
    }

    #[test]
    fn in_lists_with_and_without_parentheses() {
        assert_eq!(
            only_filter("*:t:id.in.(1,2,3)"),
            filter("id", Op::In, list(&["1", "2", "3"]))
        );
        assert_eq!(
            only_filter("*:t:s.in.a,b"),
            filter("s", Op::In, list(&["a", "b"]))
        );
        assert_eq!(only_filter("*:t:s.in.a"), filter("s", Op::In, list(&["a"])));
        assert_eq!(
            only_filter(r#"*:t:s.in.("a,b",c,"d)")"#),
            filter("s", Op::In, list(&["a,b", "c", "d)"]))
        );
        assert_eq!(
            only_filter(r#"*:t:s.in."x:y",z"#),
            filter("s", Op::In, list(&["x:y", "z"]))
        );
        assert_eq!(
            only_filter(r#"*:t:s.in.("")"#),
            filter("s", Op::In, list(&[""]))
        );
        let q = ok("*:t:s.in.(a):n.in.1,2");
        assert_eq!(q.filters.len(), 2);
    }

    #[test]
    fn is_takes_four_case_insensitive_values() {
        for (v, operand) in [
            ("null", Operand::Null),
            ("NotNull", Operand::NotNull),
            ("TRUE", Operand::True),
            ("false", Operand::False),
            ("\"null\"", Operand::Null),
        ] {
            assert_eq!(
                only_filter(&format!("*:t:c.is.{v}")),
                filter("c", Op::Is, operand)
            );
        }
    }

    #[test]
    fn numeric_operators_accept_finite_numbers() {
        for v in [
            "30",
            "-1",
            "+2",
            "1.5",
            "1e3",
            ".5",
            "\"42\"",
            "170141183460469231731687303715884105728",
        ] {
            let f = only_filter(&format!("*:t:c.lt.{v}"));
            assert_eq!(f.op, Op::Lt, "{v}");
        }
    }

    #[test]
    fn errors_have_their_kind_and_exact_position() {
        use QueryErrorKind::*;
        let cases: &[(&str, QueryErrorKind, usize, &str)] = &[
            ("", Syntax, 0, "missing actions"),
            (":users", Syntax, 0, "missing actions"),
            ("insert", Syntax, 6, "missing table"),
            ("insert:", Syntax, 7, "missing table"),
            ("insert::id.eq.1", Syntax, 7, "missing table"),
            (",insert:users", Syntax, 0, "missing action"),
            ("insert,:users", Syntax, 7, "missing action"),
            ("insert,upsert:users", UnknownAction, 7, "\"upsert\""),
            ("users", UnknownAction, 0, "\"users\""),
            ("insert:public.", Syntax, 14, "missing table name"),
            ("insert:a.b.c", Syntax, 10, "too many dots"),
            ("insert:users-x", Syntax, 12, "unexpected '-'"),
            ("insert:1users", Syntax, 7, "unexpected '1'"),
            (
                "insert:\"users",
                Syntax,
                7,
                "unterminated quoted table name",
            ),
            ("insert:\"\"", Syntax, 7, "empty quoted table name"),
            ("insert:\"users\"x", Syntax, 14, "unexpected 'x'"),
            ("insert:users:", Syntax, 13, "empty filter"),
            ("insert:users::id.eq.1", Syntax, 13, "empty filter"),
            ("insert:users:id.eq.1:", Syntax, 21, "empty filter"),
            ("insert:users:.eq.1", Syntax, 13, "missing column"),
            ("insert:users:1id.eq.5", Syntax, 13, "unexpected '1'"),
            (
                "insert:users:\"id.eq.5",
                Syntax,
                13,
                "unterminated quoted column name",
            ),
            ("insert:users:id", Syntax, 15, "missing operator"),
            ("insert:users:id:x", Syntax, 15, "missing operator"),
            ("insert:users:id.", Syntax, 16, "missing operator"),
            ("insert:users:id..5", Syntax, 16, "missing operator"),
            ("insert:users:id-x.eq.5", Syntax, 15, "unexpected '-'"),
            (
                "insert:users:id.equals.5",
                UnknownOperator,
                16,
                "\"equals\"",
            ),
            ("insert:users:id.eq", Syntax, 18, "missing value"),
            ("insert:users:id.eq:x.eq.1", Syntax, 18, "missing value"),
            ("insert:users:id.eq.", Syntax, 19, "missing value"),
            ("insert:users:id.is", Syntax, 18, "missing value"),
            ("insert:users:id.in", Syntax, 18, "missing list"),
            (
                "insert:users:name.eq.\"abc",
                Syntax,
                21,
                "unterminated quoted value",
            ),
            (
                "insert:users:name.eq.\"abc\\\"",
                Syntax,
                21,
                "unterminated quoted value",
            ),
            (
                "insert:users:name.eq.\"a\"b",
                Syntax,
                24,
                "after the closing quote",
            ),
            (
                "insert:users:name.eq.a\"b\"",
                Syntax,
                22,
                "inside an unquoted value",
            ),
            ("insert:users x", Syntax, 12, "whitespace"),
            (" insert:users", Syntax, 0, "whitespace"),
            ("insert :users", Syntax, 6, "whitespace"),
            ("insert:users:id.eq.1 2", Syntax, 20, "whitespace"),
            ("insert:users:id.in.()", EmptyList, 19, "empty in list"),
            ("insert:users:id.in.", EmptyList, 19, "empty in list"),
            ("insert:users:id.in.:a.eq.1", EmptyList, 19, "empty in list"),
            ("insert:users:id.in.(1,,2)", Syntax, 22, "empty item"),
            ("insert:users:id.in.(1,2,)", Syntax, 24, "empty item"),
            ("insert:users:id.in.1,", Syntax, 21, "empty item"),
            ("insert:users:id.in.(1,2", Syntax, 19, "unclosed '('"),
            ("insert:users:id.in.(", Syntax, 19, "unclosed '('"),
            ("insert:users:id.in.(1,2:a.eq.1", Syntax, 19, "unclosed '('"),
            (
                "insert:users:id.in.(1)x",
                Syntax,
                22,
                "after the closing ')'",
            ),
            (
                "insert:users:id.in.(\"a\"x)",
                Syntax,
                23,
                "after a quoted list item",
            ),
            ("insert:users:id.in.a)", Syntax, 20, "unexpected ')'"),
            ("insert:users:id.in.(a(b)", Syntax, 21, "unexpected '('"),
            (
                "insert:users:id.in.(\"a)",
                Syntax,
                20,
                "unterminated quoted value",
            ),
            ("insert:users:x.is.maybe", Syntax, 18, "\"maybe\""),
            ("insert:users:x.is.", Syntax, 18, "missing value"),
            ("insert:users:age.gt.abc", BadNumber, 20, "\"abc\""),
            ("insert:users:age.lt.NaN", BadNumber, 20, "not one"),
            ("insert:users:age.lte.inf", BadNumber, 21, "not one"),
            ("insert:users:age.gte.1e999", BadNumber, 21, "not one"),
            ("insert:users:age.gt.\"\"", BadNumber, 20, "not one"),
            ("insert:users:n.like.ab\\", Syntax, 20, "lone \\"),
            ("insert:users:n.ilike.\"ab\\\\\"", Syntax, 21, "lone \\"),
        ];
        for (input, kind, position, needle) in cases {
            let e = err(input);
            assert_eq!((e.kind, e.position), (*kind, *position), "{input:?}: {e}");
            assert!(
                e.message.contains(needle),
                "{input:?}: {:?} lacks {needle:?}",
                e.message
            );
            let first = e.message.chars().next().unwrap_or('X');
            assert!(
                !first.is_uppercase(),
                "{input:?}: message starts uppercase: {}",
                e.message
            );
            assert!(
                !e.message.ends_with('.'),
                "{input:?}: message ends with a period: {}",
                e.message
            );
            assert!(
                e.message.contains(':'),
                "{input:?}: message says what to do: {}",
                e.message
            );
        }
    }

    #[test]
    fn unknown_operator_lists_the_valid_ones() {
        let e = err("*:t:id.equals.5");
        assert_eq!(e.kind, QueryErrorKind::UnknownOperator);
        assert_eq!(
            e.message,
            "unknown operator \"equals\": use one of eq, neq, lt, lte, gt, gte, in, like, ilike, is"
        );
    }

    #[test]
    fn error_display_carries_the_position() {
        let e = err("insert,upsert:users");
        assert_eq!(e.to_string(), format!("{} (at position 7)", e.message),);
    }

    #[test]
    fn queries_over_the_limit_are_too_long() {
        let head = "insert:users:name.eq.";
        let at_limit = format!("{head}{}", "a".repeat(MAX_QUERY_LEN - head.len()));
        assert_eq!(at_limit.len(), MAX_QUERY_LEN);
        assert_eq!(ok(&at_limit).filters.len(), 1);
        let over = format!("{at_limit}a");
        assert_eq!(over.len(), 4097);
        let e = err(&over);
        assert_eq!(
            (e.kind, e.position),
            (QueryErrorKind::TooLong, MAX_QUERY_LEN)
        );
        assert!(e.message.contains("4097 bytes"), "{}", e.message);
        // The length check comes first, even for otherwise broken input.
        assert_eq!(err(&" ".repeat(5000)).kind, QueryErrorKind::TooLong);
        // A character across the limit: the position is where it starts
        // (found by the query fuzz target).
        let across = format!("{}é{}", "a".repeat(MAX_QUERY_LEN - 1), "a".repeat(10));
        let e = err(&across);
        assert_eq!(e.position, MAX_QUERY_LEN - 1);
        assert!(across.is_char_boundary(e.position));
    }

    #[test]
    fn from_str_is_parse() {
        let q: Result<Query, _> = "delete:t".parse();
        assert_eq!(q, parse("delete:t"));
    }
}

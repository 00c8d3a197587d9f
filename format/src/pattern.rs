//! `schema.table` patterns for `add-tables` / `filter-tables`.
//!
//! A pattern is `schema.table`; `*` matches any run of characters within its
//! part; `\` escapes the next character (`\.`, `\*`, `\,`, `\\`). A list is
//! comma separated.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Star,
}

/// One compiled `schema.table` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    schema: Vec<Tok>,
    table: Vec<Tok>,
    source: String,
}

/// Why a table pattern is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// The offending pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed table pattern \"{}\": {}",
            self.pattern, self.reason
        )
    }
}

impl std::error::Error for PatternError {}

impl TablePattern {
    /// Parses one pattern (no unescaped commas).
    pub fn parse(src: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: src.to_owned(),
            reason,
        };
        let mut parts: Vec<Vec<Tok>> = Vec::new();
        let mut cur: Vec<Tok> = Vec::new();
        let mut chars = src.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e) => cur.push(Tok::Lit(e)),
                    None => return Err(err("ends with an unfinished '\\' escape")),
                },
                '.' => parts.push(std::mem::take(&mut cur)),
                '*' => cur.push(Tok::Star),
                c => cur.push(Tok::Lit(c)),
            }
        }
        parts.push(cur);
        if parts.len() != 2 {
            return Err(err(
                "expected exactly one unescaped '.' between schema and table (write '\\.' for a dot in a name)",
            ));
        }
        let table = parts.pop().unwrap_or_default();
        let schema = parts.pop().unwrap_or_default();
        if schema.is_empty() {
            return Err(err("the schema part is empty (use '*' for any schema)"));
        }
        if table.is_empty() {
            return Err(err("the table part is empty (use '*' for any table)"));
        }
        Ok(TablePattern {
            schema,
            table,
            source: src.to_owned(),
        })
    }

    /// Parses a comma-separated list; `\,` is a literal comma.
    pub fn parse_list(src: &str) -> Result<Vec<Self>, PatternError> {
        split_list(src)
            .map_err(|reason| PatternError {
                pattern: src.to_owned(),
                reason,
            })?
            .iter()
            .map(|p| Self::parse(p))
            .collect()
    }

    /// True when `schema.table` matches.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        glob(&self.schema, &schema.chars().collect::<Vec<_>>())
            && glob(&self.table, &table.chars().collect::<Vec<_>>())
    }

    /// True when the table part matches `table`, whatever the schema.
    pub fn matches_table(&self, table: &str) -> bool {
        glob(&self.table, &table.chars().collect::<Vec<_>>())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Splits a comma-separated list, keeping `\` escapes in the items so that
/// they can be parsed further. Empty items are an error.
pub fn split_list(src: &str) -> Result<Vec<String>, &'static str> {
    // Whitespace around an item is dropped, but not an escaped one: each
    // item remembers where its last escape ends.
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut escaped_to = 0;
    let mut chars = src.chars();
    let finish = |cur: &mut String, escaped_to: &mut usize| {
        let item = std::mem::take(cur);
        let keep = std::mem::take(escaped_to);
        let end = item[keep..].trim_end().len() + keep;
        item[..end].trim_start().to_owned()
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push('\\');
                match chars.next() {
                    Some(e) => cur.push(e),
                    None => return Err("ends with an unfinished '\\' escape"),
                }
                escaped_to = cur.len();
            }
            ',' => items.push(finish(&mut cur, &mut escaped_to)),
            c => cur.push(c),
        }
    }
    items.push(finish(&mut cur, &mut escaped_to));
    if items.iter().any(|s| s.is_empty()) {
        return Err("the list has an empty item");
    }
    Ok(items)
}

/// Removes `\` escapes from one list item.
pub fn unescape(item: &str) -> String {
    let mut out = String::with_capacity(item.len());
    let mut chars = item.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(e) = chars.next() {
                out.push(e);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn glob(pat: &[Tok], s: &[char]) -> bool {
    // Iterative wildcard matching with single-star backtracking.
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pat.get(p) {
            Some(Tok::Lit(c)) if *c == s[i] => {
                p += 1;
                i += 1;
            }
            Some(Tok::Star) => {
                star = Some((p, i));
                p += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|t| *t == Tok::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_wildcard_patterns_match() {
        let p = TablePattern::parse("public.users").unwrap();
        assert!(p.matches("public", "users"));
        assert!(!p.matches("public", "users2"));
        assert!(!p.matches("other", "users"));
        let p = TablePattern::parse("*.audit_*").unwrap();
        assert!(p.matches("s1", "audit_log"));
        assert!(p.matches("s1", "audit_"));
        assert!(!p.matches("s1", "xaudit_log"));
        assert!(p.matches_table("audit_x") && !p.matches_table("log"));
        let p = TablePattern::parse("p*b.*").unwrap();
        assert!(p.matches("pub", "anything"));
        assert!(p.matches("pb", "x"));
        assert!(!p.matches("pubx", "x"));
    }

    #[test]
    fn escapes_allow_dots_stars_and_commas_in_names() {
        let p = TablePattern::parse(r"my\.schema.t\*").unwrap();
        assert!(p.matches("my.schema", "t*"));
        assert!(!p.matches("my.schema", "tx"));
        let list = TablePattern::parse_list(r"public.a\,b, s.*").unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].matches("public", "a,b"));
        assert!(list[1].matches("s", "zz"));
    }

    #[test]
    fn malformed_patterns_are_rejected_with_a_reason() {
        for (src, frag) in [
            ("users", "exactly one"),
            ("a.b.c", "exactly one"),
            (".t", "schema part is empty"),
            ("s.", "table part is empty"),
            ("s.t\\", "unfinished"),
        ] {
            let e = TablePattern::parse(src).unwrap_err();
            assert!(e.to_string().contains(frag), "{src}: {e}");
        }
        assert!(TablePattern::parse_list("a.b,,c.d").is_err());
        assert!(TablePattern::parse_list("").is_err());
    }

    #[test]
    fn escaped_whitespace_at_an_items_edges_is_kept() {
        // Found by fuzzing: the escaped trailing space was trimmed, leaving
        // an unfinished escape.
        let list = TablePattern::parse_list(" s.t\\  , \\ x.y\\\u{b}").unwrap();
        assert!(list[0].matches("s", "t "));
        assert!(!list[0].matches("s", "t"));
        assert!(list[1].matches(" x", "y\u{b}"));
        let list = TablePattern::parse_list("\u{b}a.b ,c.d\t").unwrap();
        assert!(list[0].matches("a", "b") && list[1].matches("c", "d"));
    }
}

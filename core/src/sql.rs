//! SQL text built from names: identifiers are quoted, values never appear
//! (they travel as bind parameters).

/// Quotes an identifier as `quote_ident` does, always with double quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

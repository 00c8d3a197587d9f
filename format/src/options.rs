//! The output plugin's options, parsed once when decoding starts.
//!
//! Names are kebab-case (wal2json's names where the meaning is the same). A
//! bare option (no value) means on. Unknown names and invalid values are
//! errors that name the option.

use crate::pattern::{split_list, unescape, PatternError, TablePattern};
use std::fmt;

/// Which kinds of change are written (`actions` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    pub truncate: bool,
    pub message: bool,
    pub ddl: bool,
}

impl Actions {
    /// Every action.
    pub const ALL: Actions = Actions {
        insert: true,
        update: true,
        delete: true,
        truncate: true,
        message: true,
        ddl: true,
    };
    const NONE: Actions = Actions {
        insert: false,
        update: false,
        delete: false,
        truncate: false,
        message: false,
        ddl: false,
    };

    fn parse(value: &str) -> Result<Self, String> {
        let mut a = Actions::NONE;
        let items = split_list(value).map_err(|e| e.to_string())?;
        for item in items {
            match item.to_ascii_lowercase().as_str() {
                "insert" => a.insert = true,
                "update" => a.update = true,
                "delete" => a.delete = true,
                "truncate" => a.truncate = true,
                "message" => a.message = true,
                "ddl" => a.ddl = true,
                other => {
                    return Err(format!(
                        "unknown action \"{other}\" (expected insert, update, delete, truncate, message or ddl)"
                    ))
                }
            }
        }
        Ok(a)
    }
}

/// All plugin options with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `include-lsn` (default on): `lsn` on every change.
    pub include_lsn: bool,
    /// `include-xids` (default on): `xid` on every change.
    pub include_xids: bool,
    /// `include-timestamp` (default on): commit `ts` on every change.
    pub include_timestamp: bool,
    /// `include-transaction` (default off): `B` and `C` objects around each transaction.
    pub include_transaction: bool,
    /// `include-types` (default off): `"types":{"col":"integer",...}` on row changes.
    pub include_types: bool,
    /// `add-tables`: when set, only matching tables are written.
    pub add_tables: Option<Vec<TablePattern>>,
    /// `filter-tables`: matching tables are never written.
    pub filter_tables: Vec<TablePattern>,
    /// `actions` (default all).
    pub actions: Actions,
    /// `add-msg-prefixes`: when set, only messages with one of these prefixes are written.
    pub add_msg_prefixes: Option<Vec<String>>,
    /// `filter-msg-prefixes`: messages with one of these prefixes are never written.
    pub filter_msg_prefixes: Vec<String>,
    /// `stream-changes` (default off): stream large in-progress transactions (PostgreSQL 14+).
    pub stream_changes: bool,
    /// `include-position` (default off): `pos` (commit LSN and index in the
    /// transaction) on every change of a transaction.
    pub include_position: bool,
    /// `batch-bytes` (default 0: one object per message): a transaction's
    /// objects are written in messages of about this many bytes, separated
    /// by the ASCII record separator (0x1E).
    pub batch_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            include_lsn: true,
            include_xids: true,
            include_timestamp: true,
            include_transaction: false,
            include_types: false,
            add_tables: None,
            filter_tables: Vec::new(),
            actions: Actions::ALL,
            add_msg_prefixes: None,
            filter_msg_prefixes: Vec::new(),
            stream_changes: false,
            include_position: false,
            batch_bytes: 0,
        }
    }
}

/// An option the plugin cannot accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionError {
    /// The name is not a walcast option.
    Unknown(String),
    /// The value is not valid for the option.
    Invalid {
        option: String,
        value: String,
        reason: String,
    },
    /// The option needs a value and got none.
    Missing(String),
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::Unknown(name) => write!(
                f,
                "option \"{name}\" is unknown to walcast (known: {})",
                KNOWN.join(", ")
            ),
            OptionError::Invalid {
                option,
                value,
                reason,
            } => {
                write!(
                    f,
                    "invalid value \"{value}\" for option \"{option}\": {reason}"
                )
            }
            OptionError::Missing(name) => write!(f, "option \"{name}\" needs a value"),
        }
    }
}

impl std::error::Error for OptionError {}

/// The largest `batch-bytes`.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Every option name, for error messages and docs.
pub const KNOWN: &[&str] = &[
    "include-lsn",
    "include-xids",
    "include-timestamp",
    "include-transaction",
    "include-types",
    "add-tables",
    "filter-tables",
    "actions",
    "add-msg-prefixes",
    "filter-msg-prefixes",
    "stream-changes",
    "include-position",
    "batch-bytes",
];

/// Parses a boolean as PostgreSQL does (`on/off/true/false/yes/no/1/0` and
/// unique prefixes of the words); `None` (a bare option) means on.
pub fn parse_bool(value: Option<&str>) -> Option<bool> {
    let Some(v) = value else { return Some(true) };
    let v = v.trim().to_ascii_lowercase();
    let is_prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    if is_prefix_of("true", 1) || is_prefix_of("yes", 1) || is_prefix_of("on", 2) || v == "1" {
        Some(true)
    } else if is_prefix_of("false", 1)
        || is_prefix_of("no", 1)
        || is_prefix_of("off", 2)
        || v == "0"
    {
        Some(false)
    } else {
        None
    }
}

impl Options {
    /// Parses `(name, value)` pairs as received from `START_REPLICATION` or
    /// `pg_logical_slot_get_changes`; later options override earlier ones.
    pub fn parse<'a, I>(pairs: I) -> Result<Options, OptionError>
    where
        I: IntoIterator<Item = (&'a str, Option<&'a str>)>,
    {
        let mut o = Options::default();
        for (name, value) in pairs {
            let invalid = |reason: String| OptionError::Invalid {
                option: name.to_owned(),
                value: value.unwrap_or("").to_owned(),
                reason,
            };
            let boolean = || {
                parse_bool(value)
                    .ok_or_else(|| invalid("expected a boolean (on/off, true/false)".into()))
            };
            let text = || value.ok_or_else(|| OptionError::Missing(name.to_owned()));
            let tables = |v: &str| -> Result<Vec<TablePattern>, OptionError> {
                TablePattern::parse_list(v).map_err(|e: PatternError| invalid(e.to_string()))
            };
            let prefixes = |v: &str| -> Result<Vec<String>, OptionError> {
                Ok(split_list(v)
                    .map_err(|e| invalid(e.to_string()))?
                    .iter()
                    .map(|s| unescape(s))
                    .collect())
            };
            match name {
                "include-lsn" => o.include_lsn = boolean()?,
                "include-xids" => o.include_xids = boolean()?,
                "include-timestamp" => o.include_timestamp = boolean()?,
                "include-transaction" => o.include_transaction = boolean()?,
                "include-types" => o.include_types = boolean()?,
                "stream-changes" => o.stream_changes = boolean()?,
                "include-position" => o.include_position = boolean()?,
                "batch-bytes" => {
                    o.batch_bytes = text()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n <= MAX_BATCH_BYTES)
                        .ok_or_else(|| {
                            invalid(format!(
                                "expected a number of bytes from 0 to {MAX_BATCH_BYTES}"
                            ))
                        })?
                }
                "add-tables" => o.add_tables = Some(tables(text()?)?),
                "filter-tables" => o.filter_tables = tables(text()?)?,
                "actions" => o.actions = Actions::parse(text()?).map_err(invalid)?,
                "add-msg-prefixes" => o.add_msg_prefixes = Some(prefixes(text()?)?),
                "filter-msg-prefixes" => o.filter_msg_prefixes = prefixes(text()?)?,
                other => return Err(OptionError::Unknown(other.to_owned())),
            }
        }
        if o.include_position && o.stream_changes {
            // A streamed change is sent before its commit, whose LSN it would need.
            return Err(OptionError::Invalid {
                option: "include-position".into(),
                value: "on".into(),
                reason: "cannot be combined with stream-changes: a streamed change's commit position is not known yet".into(),
            });
        }
        Ok(o)
    }

    /// Whether changes of `schema.table` are written.
    pub fn table_allowed(&self, schema: &str, table: &str) -> bool {
        if self.filter_tables.iter().any(|p| p.matches(schema, table)) {
            return false;
        }
        match &self.add_tables {
            Some(add) => add.iter().any(|p| p.matches(schema, table)),
            None => true,
        }
    }

    /// Whether a logical message with `prefix` is written.
    pub fn message_allowed(&self, prefix: &str) -> bool {
        if self.filter_msg_prefixes.iter().any(|p| p == prefix) {
            return false;
        }
        match &self.add_msg_prefixes {
            Some(add) => add.iter().any(|p| p == prefix),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&'static str, Option<&'static str>)]) -> Result<Options, OptionError> {
        Options::parse(pairs.iter().copied())
    }

    #[test]
    fn defaults_include_lsn_xid_and_timestamp() {
        let o = parse(&[]).unwrap();
        assert!(o.include_lsn && o.include_xids && o.include_timestamp);
        assert!(!o.include_transaction && !o.include_types && !o.stream_changes);
        assert_eq!(o.actions, Actions::ALL);
        assert!(o.table_allowed("any", "table"));
    }

    #[test]
    fn bare_option_means_on_and_booleans_parse_like_postgres() {
        let o = parse(&[("include-transaction", None), ("include-lsn", Some("off"))]).unwrap();
        assert!(o.include_transaction);
        assert!(!o.include_lsn);
        for v in ["on", "TRUE", "t", "yes", "1"] {
            assert_eq!(parse_bool(Some(v)), Some(true), "{v}");
        }
        for v in ["off", "false", "F", "n", "0"] {
            assert_eq!(parse_bool(Some(v)), Some(false), "{v}");
        }
        for v in ["o", "2", "maybe", ""] {
            assert_eq!(parse_bool(Some(v)), None, "{v}");
        }
    }

    #[test]
    fn unknown_and_invalid_options_name_the_problem() {
        let e = parse(&[("pretty-print", Some("1"))]).unwrap_err();
        assert!(e.to_string().contains("\"pretty-print\" is unknown"), "{e}");
        let e = parse(&[("include-xids", Some("perhaps"))]).unwrap_err();
        assert!(e.to_string().contains("\"include-xids\""), "{e}");
        assert!(e.to_string().contains("perhaps"), "{e}");
        let e = parse(&[("actions", Some("insert,upsert"))]).unwrap_err();
        assert!(e.to_string().contains("upsert"), "{e}");
        let e = parse(&[("add-tables", Some("nodot"))]).unwrap_err();
        assert!(e.to_string().contains("malformed table pattern"), "{e}");
        let e = parse(&[("add-tables", None)]).unwrap_err();
        assert_eq!(e, OptionError::Missing("add-tables".into()));
        let e = parse(&[("include-position", None), ("stream-changes", None)]).unwrap_err();
        assert!(e.to_string().contains("stream-changes"), "{e}");
        assert!(
            parse(&[("include-position", None)])
                .unwrap()
                .include_position
        );
    }

    #[test]
    fn table_and_prefix_filters_combine() {
        let o = parse(&[
            ("add-tables", Some("public.*")),
            ("filter-tables", Some("public.secret")),
        ])
        .unwrap();
        assert!(o.table_allowed("public", "users"));
        assert!(!o.table_allowed("public", "secret"));
        assert!(!o.table_allowed("other", "users"));
        let o = parse(&[
            ("add-msg-prefixes", Some(r"app,a\,b")),
            ("actions", Some("insert, message")),
        ])
        .unwrap();
        assert!(o.message_allowed("app") && o.message_allowed("a,b") && !o.message_allowed("x"));
        assert!(o.actions.insert && o.actions.message && !o.actions.update);
    }
}

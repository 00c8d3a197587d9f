//! The contracts walcast's parts share, each written once:
//!
//! - [`Action`]: the `action` letters of the change format (docs/format.md),
//!   written by the output plugin, read by the proxy and the clients, and
//!   the action byte of a WASM filter's input record;
//! - [`filter`]: the WASM filter ABI (filters/README.md): import and export
//!   names, the input record's layout.
//!
//! `no_std` and without dependencies, so that the filter SDK (wasm32) uses
//! it as the proxy does.

#![no_std]

/// What a change, or a frame of the proxy's, is: the `action` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `I`: a row inserted.
    Insert,
    /// `U`: a row updated.
    Update,
    /// `D`: a row deleted.
    Delete,
    /// `T`: tables truncated.
    Truncate,
    /// `M`: a logical decoding message.
    Message,
    /// `DDL`: a captured schema change.
    Ddl,
    /// `R`: a row read by a snapshot inside the stream (the shape of an insert).
    Read,
    /// `L`: a row a live client held left its filtered query (the proxy's
    /// frame; the plugin never writes it).
    Leave,
    /// `B`: a transaction begins.
    Begin,
    /// `C`: a transaction commits.
    Commit,
    /// `SS`: a streamed transaction's part begins.
    StreamStart,
    /// `SE`: a streamed transaction's part ends.
    StreamStop,
    /// `SC`: a streamed transaction commits.
    StreamCommit,
    /// `SA`: a streamed transaction aborts.
    StreamAbort,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 14] = [
        Action::Insert,
        Action::Update,
        Action::Delete,
        Action::Truncate,
        Action::Message,
        Action::Ddl,
        Action::Read,
        Action::Leave,
        Action::Begin,
        Action::Commit,
        Action::StreamStart,
        Action::StreamStop,
        Action::StreamCommit,
        Action::StreamAbort,
    ];

    /// The letters of the `action` field.
    pub const fn letter(self) -> &'static str {
        match self {
            Action::Insert => "I",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Truncate => "T",
            Action::Message => "M",
            Action::Ddl => "DDL",
            Action::Read => "R",
            Action::Leave => "L",
            Action::Begin => "B",
            Action::Commit => "C",
            Action::StreamStart => "SS",
            Action::StreamStop => "SE",
            Action::StreamCommit => "SC",
            Action::StreamAbort => "SA",
        }
    }

    /// The action of `letters`, if it is one.
    pub fn from_letter(letters: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.letter() == letters)
    }

    /// Its name in words (`insert`, `stream_start`): metrics labels, logs.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Truncate => "truncate",
            Action::Message => "message",
            Action::Ddl => "ddl",
            Action::Read => "read",
            Action::Leave => "leave",
            Action::Begin => "begin",
            Action::Commit => "commit",
            Action::StreamStart => "stream_start",
            Action::StreamStop => "stream_stop",
            Action::StreamCommit => "stream_commit",
            Action::StreamAbort => "stream_abort",
        }
    }

    /// The action byte of a filter's input record ([`filter::offset::ACTION`]):
    /// 1 `I`, 2 `U`, 3 `D`, 4 `T`, 5 `M`, 6 `DDL`, 7 `R`; 0 for the others,
    /// which a filter never sees.
    pub const fn record_code(self) -> u8 {
        match self {
            Action::Insert => 1,
            Action::Update => 2,
            Action::Delete => 3,
            Action::Truncate => 4,
            Action::Message => 5,
            Action::Ddl => 6,
            Action::Read => 7,
            _ => 0,
        }
    }

    /// The action a record's action byte names, if any.
    pub fn from_record_code(code: u8) -> Option<Action> {
        match code {
            0 => None,
            c => Action::ALL.into_iter().find(|a| a.record_code() == c),
        }
    }
}

impl core::fmt::Display for Action {
    /// The letters.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.letter())
    }
}

/// The WASM filter ABI, version 1 (filters/README.md).
pub mod filter {
    /// The ABI version.
    pub const ABI_VERSION: u32 = 1;
    /// The import module a filter may use.
    pub const IMPORT_MODULE: &str = "walcast_v1";
    /// The ABI marker export.
    pub const ABI_MARKER: &str = "walcast_abi_v1";
    /// The optional marker export of a filter that reads only the record
    /// header, schema and table: its records come without the JSON.
    pub const HEADER_ONLY_MARKER: &str = "walcast_header_only";

    /// The version byte at the start of every input record.
    pub const RECORD_VERSION: u8 = 1;
    /// The input record's fixed header, in bytes; the schema, table and
    /// JSON follow it.
    pub const HEADER_LEN: usize = 48;
    /// An offset or length field that has nothing to point at (no
    /// `columns`, no `identity`).
    pub const ABSENT: u32 = u32::MAX;

    /// Where each field of the record header is (integers little-endian).
    pub mod offset {
        /// u8: the record version.
        pub const VERSION: usize = 0;
        /// u8: the action byte (`Action::record_code`).
        pub const ACTION: usize = 1;
        /// u32: the schema's length.
        pub const SCHEMA_LEN: usize = 4;
        /// u32: the table's length.
        pub const TABLE_LEN: usize = 8;
        /// u32: the transaction id (0 when none).
        pub const XID: usize = 12;
        /// u64: the change's LSN.
        pub const LSN: usize = 16;
        /// u32: the JSON's offset from the record's start.
        pub const JSON_OFFSET: usize = 24;
        /// u32: the JSON's length.
        pub const JSON_LEN: usize = 28;
        /// u32: `columns`' offset inside the JSON (`ABSENT`: none).
        pub const COLUMNS_OFFSET: usize = 32;
        /// u32: `columns`' length.
        pub const COLUMNS_LEN: usize = 36;
        /// u32: `identity`'s offset inside the JSON (`ABSENT`: none).
        pub const IDENTITY_OFFSET: usize = 40;
        /// u32: `identity`'s length.
        pub const IDENTITY_LEN: usize = 44;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_and_record_codes_name_one_action_each() {
        for a in Action::ALL {
            assert_eq!(Action::from_letter(a.letter()), Some(a));
            if a.record_code() != 0 {
                assert_eq!(Action::from_record_code(a.record_code()), Some(a));
            }
        }
        assert_eq!(Action::from_letter("X"), None);
        assert_eq!(Action::from_record_code(0), None);
        assert_eq!(Action::from_record_code(8), None);
    }
}

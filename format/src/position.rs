//! A change's position in the stream: its transaction's commit LSN and its
//! place in that transaction. Logical decoding sends transactions in commit
//! order, so positions are totally ordered across transactions and the same
//! change has the same position however often it is decoded.
//!
//! Text form (`pos` in the plugin's JSON with `include-position`): 16
//! hexadecimal digits of the commit LSN, `:`, 8 hexadecimal digits of the
//! index, upper case: `00000000016B3800:00000003`. The fixed width makes the
//! text order the position order, so clients may compare positions as
//! strings.

use crate::lsn::{parse_hex, Lsn};
use std::fmt;
use std::str::FromStr;

/// Where a change sits in the stream. Ordered by commit LSN, then index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// The LSN of the transaction's commit record.
    pub commit: Lsn,
    /// The change's place in its transaction, from 0.
    pub index: u32,
}

/// Length of the text form.
pub const TEXT_LEN: usize = 25;

impl Position {
    /// The position of change `index` of the transaction committed at `commit`.
    pub fn new(commit: Lsn, index: u32) -> Position {
        Position { commit, index }
    }

    /// Writes the text form into `out` without allocating.
    pub fn write_to(self, out: &mut Vec<u8>) {
        write_hex(out, self.commit.0, 16);
        out.push(b':');
        write_hex(out, u64::from(self.index), 8);
    }
}

fn write_hex(out: &mut Vec<u8>, v: u64, digits: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for i in (0..digits).rev() {
        out.push(DIGITS[((v >> (i * 4)) & 0xF) as usize]);
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}:{:08X}", self.commit.0, self.index)
    }
}

/// Why a string is not a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePositionError(String);

impl fmt::Display for ParsePositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(40).collect();
        write!(
            f,
            "invalid position {shown:?}: expected the \"pos\" of a change, 16 and 8 hexadecimal digits separated by ':' (like 00000000016B3800:00000003)"
        )
    }
}

impl std::error::Error for ParsePositionError {}

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Position, ParsePositionError> {
        let err = || ParsePositionError(s.to_owned());
        let (commit, index) = s.split_once(':').ok_or_else(err)?;
        let commit = parse_hex(commit.as_bytes(), 16).ok_or_else(err)?;
        let index = parse_hex(index.as_bytes(), 8).ok_or_else(err)?;
        Ok(Position {
            commit: Lsn(commit),
            index: u32::try_from(index).map_err(|_| err())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_sorts_like_positions() {
        let ps = [
            Position::new(Lsn(0), 0),
            Position::new(Lsn(0x16B3800), 3),
            Position::new(Lsn(0x16B3800), 0x10),
            Position::new(Lsn(0x1_0000_0000), 0),
            Position::new(Lsn(u64::MAX), u32::MAX),
        ];
        for w in ps.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_string() < w[1].to_string());
        }
        for p in ps {
            let text = p.to_string();
            assert_eq!(text.len(), TEXT_LEN);
            let mut buf = Vec::new();
            p.write_to(&mut buf);
            assert_eq!(buf, text.as_bytes());
            assert_eq!(text.parse::<Position>(), Ok(p));
        }
        assert_eq!(
            Position::new(Lsn(0x16B3800), 3).to_string(),
            "00000000016B3800:00000003"
        );
    }

    #[test]
    fn short_and_lower_case_forms_parse_and_junk_does_not() {
        assert_eq!(
            "16b3800:3".parse::<Position>(),
            Ok(Position::new(Lsn(0x16B3800), 3))
        );
        for bad in [
            "",
            ":",
            "1:",
            ":1",
            "0/16B3800",
            "x:1",
            "1:1:1",
            "00000000000000000:0",
            "0:000000000",
            " 1:1",
            "1:g",
            "G:1",
            "1:\u{e9}",
            "1:/",
        ] {
            let e = bad.parse::<Position>().unwrap_err();
            assert!(e.to_string().contains("invalid position"), "{bad}: {e}");
        }
    }
}

//! Log sequence numbers in PostgreSQL's `X/Y` notation.

use std::fmt;
use std::str::FromStr;

/// A WAL position. Displays and parses as PostgreSQL does: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid position, `0/0`.
    pub const INVALID: Lsn = Lsn(0);

    /// Writes the `X/Y` form into `out` without allocating.
    pub fn write_to(self, out: &mut Vec<u8>) {
        write_hex_u32(out, (self.0 >> 32) as u32);
        out.push(b'/');
        write_hex_u32(out, self.0 as u32);
    }
}

fn write_hex_u32(out: &mut Vec<u8>, v: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    if v == 0 {
        out.push(b'0');
        return;
    }
    let mut buf = [0u8; 8];
    let mut i = buf.len();
    let mut v = v;
    while v != 0 {
        i -= 1;
        buf[i] = DIGITS[(v & 0xF) as usize];
        v >>= 4;
    }
    out.extend_from_slice(&buf[i..]);
}

/// The value of each byte as a hexadecimal digit (either case), or 0xFF.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'A' as usize + i] = 10 + i as u8;
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// 1 to `max` (at most 16) hexadecimal digits, either case. Checks every
/// digit without a branch per digit: this runs for every change the proxy
/// reads (`lsn` and `pos`).
pub(crate) fn parse_hex(digits: &[u8], max: usize) -> Option<u64> {
    if digits.is_empty() || digits.len() > max.min(16) {
        return None;
    }
    let mut v = 0u64;
    let mut invalid = 0u8;
    for &d in digits {
        let n = HEX_VALUE[usize::from(d)];
        invalid |= n;
        v = (v << 4) | u64::from(n & 0xF);
    }
    (invalid & 0x80 == 0).then_some(v)
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLsnError(String);

impl fmt::Display for ParseLsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid LSN {:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848",
            self.0
        )
    }
}

impl std::error::Error for ParseLsnError {}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = parse_hex(hi.as_bytes(), 8).ok_or_else(err)?;
        let lo = parse_hex(lo.as_bytes(), 8).ok_or_else(err)?;
        Ok(Lsn((hi << 32) | lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        let mut buf = Vec::new();
        Lsn(0x16_B374_D848).write_to(&mut buf);
        assert_eq!(buf, b"16/B374D848");
        buf.clear();
        Lsn(0x1_0000_0000).write_to(&mut buf);
        assert_eq!(buf, b"1/0");
    }

    #[test]
    fn parses_round_trip_and_rejects_garbage() {
        for v in [
            0u64,
            1,
            0xFFFF_FFFF,
            0x1_0000_0000,
            u64::MAX,
            0x16_B374_D848,
        ] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }
        assert_eq!("0/16b3748".parse::<Lsn>(), Ok(Lsn(0x16B3748)));
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "x/1",
            "1/2/3",
            "123456789/0",
            " 1/2",
            "-1/2",
            "+1/2",
            "g/1",
            "1/G",
            "1/\u{e9}",
            "1/:",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }
}

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
        let valid =
            |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
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
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }
}

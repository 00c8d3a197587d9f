//! Lazy, allocation-free access to the JSON the plugin writes: find a key in
//! an object, read a number, bool or string, without parsing the rest.
//!
//! The input is trusted to be valid JSON (walcast-proxy hands the plugin's
//! bytes); on anything unexpected the accessors return `None`.

/// A JSON value, as a view into the event's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// A number, as written (`12`, `-1.5e3`).
    Number(&'a str),
    String(Str<'a>),
    Array(&'a [u8]),
    Object(Object<'a>),
}

/// A JSON string as written, without its quotes (escapes not yet decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Str<'a> {
    pub raw: &'a [u8],
}

/// A JSON object, as a view into the event's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object<'a> {
    /// The object's bytes, `{` to `}`.
    pub raw: &'a [u8],
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that equals `c` (exact up to the first
/// match, which is all the callers use).
#[inline(always)]
fn bytes_equal(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * u64::from(c));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The index of the first `"` or `\` in `b` at or after `i`.
///
/// JSON strings are where a scan spends its time, so this looks at 16
/// bytes per step with WebAssembly SIMD when the module is built with
/// `-C target-feature=+simd128`, 8 bytes per step otherwise.
#[inline]
fn find_quote_or_backslash(b: &[u8], mut i: usize) -> Option<usize> {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::{i8x16_bitmask, i8x16_eq, u8x16_splat, v128, v128_or};
        let (quote, backslash) = (u8x16_splat(b'"'), u8x16_splat(b'\\'));
        while let Some(chunk) = b.get(i..i + 16) {
            // SAFETY: `chunk` is 16 readable bytes; `v128` has no validity
            // requirements and the read is unaligned.
            let v = unsafe { core::ptr::read_unaligned(chunk.as_ptr() as *const v128) };
            let hits = i8x16_bitmask(v128_or(i8x16_eq(v, quote), i8x16_eq(v, backslash)));
            if hits != 0 {
                return Some(i + hits.trailing_zeros() as usize);
            }
            i += 16;
        }
    }
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let hits = bytes_equal(w, b'"') | bytes_equal(w, b'\\');
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while i < b.len() {
        if b[i] == b'"' || b[i] == b'\\' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The end (exclusive) of the string starting at `i` (at its opening quote).
#[inline]
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j = find_quote_or_backslash(b, j)?;
        if b[j] == b'"' {
            return Some(j + 1);
        }
        j += 2;
    }
}

/// The end (exclusive) of the value starting at `i`.
#[inline]
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            // A number or a literal: short, up to the next delimiter.
            let mut j = i + 1;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// `b` as text when it is all ASCII (numbers), without the general UTF-8
/// validation's fixed cost.
#[inline]
fn ascii_str(b: &[u8]) -> Option<&str> {
    if b.iter().all(u8::is_ascii) {
        // SAFETY: every byte is ASCII, and ASCII is valid UTF-8.
        Some(unsafe { core::str::from_utf8_unchecked(b) })
    } else {
        None
    }
}

/// Reads the value at `b[i..end]`.
fn value_at(b: &[u8], i: usize, end: usize) -> Option<Value<'_>> {
    let raw = b.get(i..end)?;
    Some(match raw.first()? {
        b'"' => Value::String(Str {
            raw: raw.get(1..raw.len() - 1)?,
        }),
        b'{' => Value::Object(Object { raw }),
        b'[' => Value::Array(raw),
        b't' => Value::Bool(true),
        b'f' => Value::Bool(false),
        b'n' => Value::Null,
        _ => Value::Number(ascii_str(raw)?),
    })
}

#[inline(always)]
fn load_u32(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(w)
}

#[inline(always)]
fn load_u64(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

/// Byte equality without the fixed cost of `memcmp` (keys and table names
/// are short): a few word compares, overlapping at the end.
#[inline]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=8 => load_u32(a, 0) == load_u32(b, 0) && load_u32(a, n - 4) == load_u32(b, n - 4),
        _ => {
            let mut i = 0;
            while i + 8 < n {
                if load_u64(a, i) != load_u64(b, i) {
                    return false;
                }
                i += 8;
            }
            load_u64(a, n - 8) == load_u64(b, n - 8)
        }
    }
}

/// Compares a raw JSON string (escapes included) with `key`.
fn key_eq(raw: &[u8], key: &str) -> bool {
    if !raw.contains(&b'\\') {
        return bytes_eq(raw, key.as_bytes());
    }
    let mut decoded = Str { raw }.chars();
    let mut want = key.chars();
    loop {
        match (decoded.next(), want.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// One member of an object: key, value and where the value sits in the
/// object's bytes (for rewriting it).
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub key: Str<'a>,
    pub value: Value<'a>,
    /// Byte range of the value inside [`Object::raw`].
    pub span: (usize, usize),
}

/// Iterates the members of an object.
pub struct Members<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Iterator for Members<'a> {
    type Item = Member<'a>;
    fn next(&mut self) -> Option<Member<'a>> {
        let b = self.b;
        let mut i = skip_ws(b, self.i);
        if matches!(b.get(i), Some(b',')) {
            i = skip_ws(b, i + 1);
        }
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let kend = string_end(b, i)?;
        let key = Str {
            raw: b.get(i + 1..kend - 1)?,
        };
        let mut j = skip_ws(b, kend);
        if b.get(j) != Some(&b':') {
            return None;
        }
        j = skip_ws(b, j + 1);
        let vend = value_end(b, j)?;
        let value = value_at(b, j, vend)?;
        self.i = vend;
        Some(Member {
            key,
            value,
            span: (j, vend),
        })
    }
}

impl<'a> Object<'a> {
    /// Parses `raw` as an object (only its first byte is checked).
    pub fn new(raw: &'a [u8]) -> Option<Object<'a>> {
        if raw.first() == Some(&b'{') {
            return Some(Object { raw });
        }
        let start = skip_ws(raw, 0);
        (raw.get(start) == Some(&b'{')).then(|| Object { raw: &raw[start..] })
    }

    /// The members, in order.
    pub fn members(&self) -> Members<'a> {
        Members { b: self.raw, i: 1 }
    }

    /// The value of `key`, if present: a scan that only decodes the
    /// value it returns.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        let b = self.raw;
        let k = key.as_bytes();
        let mut i = 1;
        loop {
            while i < b.len() && matches!(b[i], b',' | b' ' | b'\t' | b'\n' | b'\r') {
                i += 1;
            }
            if *b.get(i)? != b'"' {
                return None;
            }
            let kend = string_end(b, i)?;
            let raw_key = &b[i + 1..kend - 1];
            let hit = bytes_eq(raw_key, k)
                // Escapes make the raw key longer than the key it spells.
                || (raw_key.len() > k.len() && key_eq(raw_key, key));
            i = kend;
            if b.get(i) != Some(&b':') {
                i = skip_ws(b, i);
                if b.get(i) != Some(&b':') {
                    return None;
                }
            }
            i += 1;
            if matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                i = skip_ws(b, i);
            }
            let vend = value_end(b, i)?;
            if hit {
                return value_at(b, i, vend);
            }
            i = vend;
        }
    }
}

impl<'a> Value<'a> {
    /// A number as `f64` (also a string holding a number, as the plugin
    /// writes `numeric` NaN and infinities).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => fast_f64(n.as_bytes()).or_else(|| n.parse().ok()),
            Value::String(s) => core::str::from_utf8(s.raw).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// A number as `i64`, when it is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<Object<'a>> {
        match self {
            Value::Object(o) => Some(*o),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<Str<'a>> {
        match self {
            Value::String(s) => Some(*s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// `[-]digits[.digits]` with at most 15 significant digits, exactly (the
/// mantissa and the power of ten are exact doubles, so one division rounds
/// correctly); anything else is left to the full parser.
fn fast_f64(b: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (neg, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let (mut mantissa, mut dot) = (0u64, usize::MAX);
    for (at, &c) in digits.iter().enumerate() {
        let d = c.wrapping_sub(b'0');
        if d < 10 {
            mantissa = mantissa * 10 + u64::from(d);
        } else if c == b'.' && dot == usize::MAX {
            dot = at;
        } else {
            return None;
        }
    }
    let (count, scale) = if dot == usize::MAX {
        (digits.len(), 0)
    } else {
        (digits.len() - 1, digits.len() - 1 - dot)
    };
    if count == 0 || count > 15 {
        return None;
    }
    let v = mantissa as f64 / POW10[scale];
    Some(if neg { -v } else { v })
}

/// Decoded characters of a JSON string.
pub struct Chars<'a> {
    raw: &'a [u8],
    i: usize,
}

fn hex4(b: &[u8]) -> Option<u32> {
    let s = core::str::from_utf8(b.get(..4)?).ok()?;
    u32::from_str_radix(s, 16).ok()
}

impl Iterator for Chars<'_> {
    type Item = char;
    fn next(&mut self) -> Option<char> {
        let b = self.raw;
        let c = *b.get(self.i)?;
        if c != b'\\' {
            let len = match c {
                0..=0x7F => 1,
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            // Stops at an invalid byte (never produced by the plugin).
            let ch = core::str::from_utf8(b.get(self.i..self.i + len)?)
                .ok()?
                .chars()
                .next()?;
            self.i += len;
            return Some(ch);
        }
        let e = *b.get(self.i + 1)?;
        self.i += 2;
        Some(match e {
            b'n' => '\n',
            b't' => '\t',
            b'r' => '\r',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'u' => {
                let hi = hex4(b.get(self.i..)?)?;
                self.i += 4;
                if (0xD800..0xDC00).contains(&hi) && b.get(self.i) == Some(&b'\\') {
                    let lo = hex4(b.get(self.i + 2..)?)?;
                    self.i += 6;
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00)))?
                } else {
                    char::from_u32(hi)?
                }
            }
            other => other as char,
        })
    }
}

impl<'a> Str<'a> {
    /// The decoded characters.
    pub fn chars(&self) -> Chars<'a> {
        Chars {
            raw: self.raw,
            i: 0,
        }
    }

    /// Whether the decoded string equals `s`.
    pub fn eq_str(&self, s: &str) -> bool {
        key_eq(self.raw, s)
    }

    /// The string as `&str` when it has no escapes.
    pub fn as_plain(&self) -> Option<&'a str> {
        if self.raw.contains(&b'\\') {
            None
        } else {
            core::str::from_utf8(self.raw).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_members_and_values() {
        let o = Object::new(
            br#"{"id":12,"name":"a\"b","tags":[1,{"x":"]"}],"o":{"k":null},"t":true,"n":-1.5e3,"u":"\u00e9\ud83d\ude00"}"#,
        )
        .expect("object");
        assert_eq!(o.get("id").and_then(|v| v.as_i64()), Some(12));
        assert!(o
            .get("name")
            .and_then(|v| v.as_str())
            .is_some_and(|s| s.eq_str("a\"b")));
        assert!(matches!(o.get("tags"), Some(Value::Array(a)) if a == br#"[1,{"x":"]"}]"#));
        assert!(o
            .get("o")
            .and_then(|v| v.as_object())
            .and_then(|o| o.get("k"))
            .is_some_and(|v| v.is_null()));
        assert_eq!(o.get("t").and_then(|v| v.as_bool()), Some(true));
        assert_eq!(o.get("n").and_then(|v| v.as_f64()), Some(-1500.0));
        for n in [
            "0",
            "-0.5",
            "250.25",
            "123456789012345",
            "0.1",
            "1.7976931348623157e308",
            "1e-7",
            "12345678901234567",
        ] {
            assert_eq!(Value::Number(n).as_f64(), n.parse::<f64>().ok(), "{n}");
        }
        assert!(o
            .get("u")
            .and_then(|v| v.as_str())
            .is_some_and(|s| s.eq_str("é😀")));
        assert!(o.get("missing").is_none());
        assert_eq!(o.members().count(), 7);
        let m = o.members().nth(1).expect("second");
        assert_eq!(&o.raw[m.span.0..m.span.1], br#""a\"b""#);
    }

    #[test]
    fn finds_quotes_and_backslashes_at_every_offset() {
        for len in 0..40 {
            for at in 0..=len {
                for c in [b'"', b'\\'] {
                    let mut b = [b'x'; 40];
                    let b = &mut b[..len];
                    if at < len {
                        b[at] = c;
                        // A later match must not hide the first one.
                        if at + 3 < len {
                            b[at + 3] = b'"';
                        }
                    }
                    for from in 0..=at.min(len) {
                        let want = b.iter().skip(from).position(|&x| x == b'"' || x == b'\\');
                        assert_eq!(
                            find_quote_or_backslash(b, from),
                            want.map(|p| p + from),
                            "len {len} at {at} from {from}"
                        );
                    }
                }
            }
        }
        // Bytes with the high bit set next to a match (UTF-8 text).
        let s = "é\"ü\\".as_bytes();
        assert_eq!(find_quote_or_backslash(s, 0), Some(2));
        assert_eq!(string_end(br#""a\"b" "#, 0), Some(6));
    }

    #[test]
    fn bytes_eq_agrees_with_slice_equality() {
        let base: Vec<u8> = (0..24u8).map(|i| b'a' + i).collect();
        for n in 0..base.len() {
            let a = &base[..n];
            assert!(bytes_eq(a, a), "{n}");
            for at in 0..n {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!bytes_eq(a, &b), "{n} differs at {at}");
            }
            if n > 0 {
                assert!(!bytes_eq(a, &base[..n - 1]));
            }
        }
    }

    #[test]
    fn escaped_keys_compare_decoded() {
        let o = Object::new(br#"{"we\"ird":1, "plain" : 2 }"#).expect("object");
        assert_eq!(o.get("we\"ird").and_then(|v| v.as_i64()), Some(1));
        assert_eq!(o.get("plain").and_then(|v| v.as_i64()), Some(2));
    }
}

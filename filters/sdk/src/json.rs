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

/// The end (exclusive) of the string starting at `i` (at its opening quote).
#[inline]
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        // A tight scan for the next quote or backslash.
        let k = b.get(j..)?.iter().position(|&c| c == b'"' || c == b'\\')?;
        j += k;
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
            let rest = b.get(i..)?;
            let k = rest
                .iter()
                .position(|&c| matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                .unwrap_or(rest.len());
            Some(i + k)
        }
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
        _ => Value::Number(core::str::from_utf8(raw).ok()?),
    })
}

/// Byte equality without the fixed cost of `memcmp` (keys are short).
#[inline]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
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
        let mut i = 1;
        loop {
            i += b
                .get(i..)?
                .iter()
                .position(|&c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b','))?;
            if b[i] != b'"' {
                return None;
            }
            let kend = string_end(b, i)?;
            let raw_key = &b[i + 1..kend - 1];
            let hit = bytes_eq(raw_key, key.as_bytes())
                // Escapes make the raw key longer than the key it spells.
                || (raw_key.len() > key.len() && key_eq(raw_key, key));
            i = kend + b.get(kend..)?.iter().position(|&c| c == b':')? + 1;
            i = skip_ws(b, i);
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
    let (mut mantissa, mut count, mut scale, mut dot) = (0u64, 0usize, 0usize, false);
    for &c in digits {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                count += 1;
                if dot {
                    scale += 1;
                }
            }
            b'.' if !dot => dot = true,
            _ => return None,
        }
    }
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
    fn escaped_keys_compare_decoded() {
        let o = Object::new(br#"{"we\"ird":1, "plain" : 2 }"#).expect("object");
        assert_eq!(o.get("we\"ird").and_then(|v| v.as_i64()), Some(1));
        assert_eq!(o.get("plain").and_then(|v| v.as_i64()), Some(2));
    }
}

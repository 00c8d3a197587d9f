//! Writing JSON exactly as PostgreSQL's `to_json` does.
//!
//! The functions here cover the parts that need no catalog access: string
//! escaping (PostgreSQL's `escape_json`), integers, and the fixed formats of
//! `uuid` and `bytea` (with `bytea_output = hex`).

/// Appends `s` as a JSON string literal, escaping like PostgreSQL's `escape_json`:
/// `\b \f \n \r \t \" \\` by name, other control characters as `\u00xx`
/// (lowercase hex), everything else (including non-ASCII UTF-8) verbatim.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_str_body(out, s);
    out.push(b'"');
}

/// Appends the escaped contents of `s` without the surrounding quotes.
pub fn write_str_body(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => {
                out.extend_from_slice(&s[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xF) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// Appends a signed integer.
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// Appends an unsigned integer.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Appends a uuid's 16 bytes as `"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"`.
pub fn write_uuid(out: &mut Vec<u8>, bytes: &[u8; 16]) {
    out.push(b'"');
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX_LOWER[(b >> 4) as usize]);
        out.push(HEX_LOWER[(b & 0xF) as usize]);
    }
    out.push(b'"');
}

/// Appends a bytea in hex output form as a JSON string: `"\\x0aff"`
/// (the backslash of `\x` escaped, as `to_json` does).
pub fn write_bytea_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() * 2 + 5);
    out.extend_from_slice(b"\"\\\\x");
    for b in bytes {
        out.push(HEX_LOWER[(b >> 4) as usize]);
        out.push(HEX_LOWER[(b & 0xF) as usize]);
    }
    out.push(b'"');
}

/// True when `s` is a JSON number as PostgreSQL's `IsValidJsonNumber` accepts
/// it: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. Numeric output functions print
/// `NaN`, `Infinity` and `-Infinity`, which `to_json` quotes.
pub fn is_json_number(s: &[u8]) -> bool {
    let mut i = 0;
    if s.first() == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && s[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if s.get(i) == Some(&b'0') {
        i += 1;
    } else if !digits(&mut i) {
        return false;
    }
    if i < s.len() && s[i] == b'.' {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
        i += 1;
        if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == s.len()
}

/// Appends the output of a numeric type's output function as `to_json` does:
/// bare when it is a JSON number, quoted otherwise (`"NaN"`, `"Infinity"`).
pub fn write_number_text(out: &mut Vec<u8>, text: &[u8]) {
    if is_json_number(text) {
        out.extend_from_slice(text);
    } else {
        write_str(out, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn escapes_like_escape_json() {
        assert_eq!(s(|o| write_str(o, b"plain")), r#""plain""#);
        assert_eq!(s(|o| write_str(o, b"a\"b\\c")), r#""a\"b\\c""#);
        assert_eq!(
            s(|o| write_str(o, b"\x08\x0c\n\r\t\x01\x1f\x7f")),
            "\"\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\""
        );
        assert_eq!(s(|o| write_str(o, "é漢😀".as_bytes())), "\"é漢😀\"");
        assert_eq!(s(|o| write_str(o, b"")), r#""""#);
    }

    #[test]
    fn integers_uuid_and_bytea() {
        assert_eq!(s(|o| write_i64(o, i64::MIN)), "-9223372036854775808");
        assert_eq!(s(|o| write_u64(o, 740)), "740");
        let u = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        assert_eq!(
            s(|o| write_uuid(o, &u)),
            r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#
        );
        assert_eq!(s(|o| write_bytea_hex(o, &[0x0a, 0xff])), r#""\\x0aff""#);
        assert_eq!(s(|o| write_bytea_hex(o, &[])), r#""\\x""#);
    }

    #[test]
    fn numbers_bare_special_values_quoted() {
        for n in [
            "0",
            "-1",
            "1.5",
            "1e+100",
            "1.234e-05",
            "-0",
            "0.5",
            "3.14159",
        ] {
            assert_eq!(s(|o| write_number_text(o, n.as_bytes())), n);
        }
        assert_eq!(s(|o| write_number_text(o, b"NaN")), r#""NaN""#);
        assert_eq!(s(|o| write_number_text(o, b"-Infinity")), r#""-Infinity""#);
        for bad in ["", "-", "1.", ".5", "1e", "1e+", "+1", "0x10", "012"] {
            assert!(!is_json_number(bad.as_bytes()), "{bad}");
        }
    }
}

//! SQL LIKE patterns (`like`, `ilike`), compiled once when a query is
//! parsed: `%` any run of characters, `_` one character, `\` escapes the next.
//!
//! The pattern is split at its `%`s into pieces. The first piece must match at
//! the start of the text and the last at its end; the pieces between are
//! found left to right, each at its leftmost place after the one before
//! (always the best choice, so there is no backtracking). A piece without `_`
//! is found with a substring search and a piece with `_` with a bit-parallel
//! search (shift-and, one word of state per 64 characters of the piece), so
//! matching takes time linear in the text.

use memchr::memmem;
use std::collections::BTreeMap;

/// A compiled LIKE pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Like {
    /// The pattern as written in the query.
    pub source: String,
    /// `ilike`: the pattern and the text are compared in Unicode lowercase.
    pub fold_case: bool,
    /// The pieces between `%`s (one more than there are `%`s).
    pieces: Vec<Piece>,
}

/// A run of the pattern between two `%`s.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    /// Each character: `Some(c)` must be `c`, `None` (`_`) any one.
    chars: Vec<Option<char>>,
    /// The piece as text when it has no `_` (found by substring search).
    literal: Option<String>,
    /// For a piece with `_`: per character of the piece, the positions it
    /// may stand at (bit i of word i / 64), `_`'s positions included.
    masks: BTreeMap<char, Vec<u64>>,
    /// The positions of `_`: what any other character may stand at.
    any: Vec<u64>,
}

impl Piece {
    fn new(chars: Vec<Option<char>>) -> Piece {
        let literal: Option<String> = chars.iter().copied().collect();
        let (mut masks, mut any) = (BTreeMap::new(), Vec::new());
        if literal.is_none() {
            let words = chars.len().div_ceil(64);
            any = vec![0u64; words];
            for (i, c) in chars.iter().enumerate() {
                let bit = 1u64 << (i % 64);
                match c {
                    None => any[i / 64] |= bit,
                    Some(c) => masks.entry(*c).or_insert_with(|| vec![0u64; words])[i / 64] |= bit,
                }
            }
            for m in masks.values_mut() {
                for (w, a) in m.iter_mut().zip(&any) {
                    *w |= a;
                }
            }
        }
        Piece {
            chars,
            literal,
            masks,
            any,
        }
    }

    /// Where the piece ends when it matches `text` at byte offset `start`.
    fn match_at(&self, text: &str, start: usize) -> Option<usize> {
        let rest = text.get(start..)?;
        let mut it = rest.char_indices();
        for want in &self.chars {
            let (_, c) = it.next()?;
            if want.is_some_and(|w| w != c) {
                return None;
            }
        }
        Some(it.next().map_or(text.len(), |(i, _)| start + i))
    }

    /// Where the piece must start to end where `text` ends.
    fn start_for_end(&self, text: &str) -> Option<usize> {
        let n = self.chars.len();
        if n == 0 {
            return Some(text.len());
        }
        text.char_indices().rev().nth(n - 1).map(|(i, _)| i)
    }

    /// The end of the leftmost match in `hay` at or after byte offset `from`.
    fn find(&self, hay: &str, from: usize) -> Option<usize> {
        if let Some(lit) = &self.literal {
            let at = memmem::find(hay.get(from..)?.as_bytes(), lit.as_bytes())?;
            return Some(from + at + lit.len());
        }
        // Shift-and: bit i of the state is set when the piece's first i + 1
        // characters end at the current character. One pass over the text,
        // a word of state per 64 characters of the piece.
        let k = self.chars.len();
        let mut state = vec![0u64; self.any.len()];
        for (i, c) in hay.get(from..)?.char_indices() {
            let mask = self.masks.get(&c).unwrap_or(&self.any);
            let mut carry = 1u64;
            for (s, m) in state.iter_mut().zip(mask) {
                let out = *s >> 63;
                *s = ((*s << 1) | carry) & m;
                carry = out;
            }
            if state[(k - 1) / 64] >> ((k - 1) % 64) & 1 == 1 {
                return Some(from + i + c.len_utf8());
            }
        }
        None
    }
}

impl Like {
    /// Compiles `pattern`; `fold_case` for `ilike`.
    pub fn new(pattern: &str, fold_case: bool) -> Like {
        let folded;
        let text = if fold_case {
            folded = pattern.to_lowercase();
            folded.as_str()
        } else {
            pattern
        };
        let mut pieces = Vec::new();
        let mut current = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => pieces.push(Piece::new(std::mem::take(&mut current))),
                '_' => current.push(None),
                // A lone trailing backslash (the parser rejects it) matches itself.
                '\\' => current.push(Some(chars.next().unwrap_or('\\'))),
                c => current.push(Some(c)),
            }
        }
        pieces.push(Piece::new(current));
        Like {
            source: pattern.to_owned(),
            fold_case,
            pieces,
        }
    }

    /// Work per byte of text, for [`crate::query::RowFilter::cost`]: one for the
    /// substring searches, plus a word of state per 64 characters of each
    /// piece with `_`, plus one for lowercasing (`ilike`).
    pub fn work_per_byte(&self) -> usize {
        let words: usize = self.pieces.iter().map(|p| p.any.len()).sum();
        1 + words + usize::from(self.fold_case)
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        if self.fold_case {
            self.matches_as_is(&text.to_lowercase())
        } else {
            self.matches_as_is(text)
        }
    }

    fn matches_as_is(&self, text: &str) -> bool {
        let (first, last) = match self.pieces.as_slice() {
            [] => return text.is_empty(),
            [only] => return only.match_at(text, 0) == Some(text.len()),
            [first, .., last] => (first, last),
        };
        let Some(mut at) = first.match_at(text, 0) else {
            return false;
        };
        let Some(tail) = last.start_for_end(text) else {
            return false;
        };
        if tail < at || last.match_at(text, tail) != Some(text.len()) {
            return false;
        }
        let middle = &text[..tail];
        for piece in &self.pieces[1..self.pieces.len() - 1] {
            match piece.find(middle, at) {
                Some(end) => at = end,
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Like;

    /// LIKE by its definition, with full backtracking: the reference.
    fn reference(text: &[char], pattern: &[char]) -> bool {
        match pattern.first() {
            None => text.is_empty(),
            Some('%') => (0..=text.len()).any(|i| reference(&text[i..], &pattern[1..])),
            Some('_') => !text.is_empty() && reference(&text[1..], &pattern[1..]),
            Some('\\') => {
                let (c, rest) = match pattern.get(1) {
                    Some(c) => (*c, &pattern[2..]),
                    None => ('\\', &pattern[1..]),
                };
                text.first() == Some(&c) && reference(&text[1..], rest)
            }
            Some(c) => text.first() == Some(c) && reference(&text[1..], &pattern[1..]),
        }
    }

    fn like(text: &str, pattern: &str) -> bool {
        Like::new(pattern, false).matches(text)
    }

    #[test]
    fn wildcards_and_escapes() {
        assert!(like("Ann", "A%"));
        assert!(like("Ann", "%n"));
        assert!(like("Ann", "_nn"));
        assert!(like("Ann", "%"));
        assert!(like("", "%"));
        assert!(like("", "%%"));
        assert!(!like("", "_"));
        assert!(like("abcabc", "%b%c"));
        assert!(like("aXbXc", "a%b%c"));
        assert!(!like("acb", "a%b%c"));
        assert!(like("50%", r"50\%"));
        assert!(!like("500", r"50\%"));
        assert!(like("a_b", r"a\_b"));
        assert!(!like("axb", r"a\_b"));
        assert!(like("été", "_t_"));
        assert!(like("naïve café", "%ï%é"));
        // The last piece is anchored at the end, the first at the start,
        // and they may not overlap.
        assert!(!like("ab", "ab%b"));
        assert!(like("abb", "ab%b"));
        assert!(like("aaa", "a%a"));
        assert!(!like("a", "a%a"));
    }

    #[test]
    fn ilike_folds_case() {
        let p = Like::new("%ÉCOLE%", true);
        assert!(p.matches("une école"));
        assert!(!Like::new("%ÉCOLE%", false).matches("une école"));
        assert!(Like::new("straße", true).matches("STRAßE"));
    }

    /// Pieces with `_` longer than one word of search state (64 characters).
    #[test]
    fn long_pieces_with_wildcards() {
        let piece = "a_".repeat(40) + "b";
        let pattern = format!("%{piece}%");
        let hit = "x".repeat(100) + &"ay".repeat(40) + "b" + "zz";
        let miss = "x".repeat(100) + &"ay".repeat(39) + "ab" + "zz";
        for text in [&hit, &miss, &"a".repeat(300)] {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            assert_eq!(like(text, &pattern), reference(&t, &p), "{text}");
        }
        assert!(like(&hit, &pattern));
        assert!(!like(&miss, &pattern));
    }

    /// Random patterns over a small alphabet against random texts agree with
    /// the backtracking reference.
    #[test]
    fn agrees_with_the_reference() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let alphabet = ['a', 'b', 'é', '%', '_', '\\'];
        for _ in 0..20_000 {
            let pattern: String = (0..next(8)).map(|_| alphabet[next(6) as usize]).collect();
            let text: String = (0..next(10)).map(|_| alphabet[next(4) as usize]).collect();
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            assert_eq!(
                like(&text, &pattern),
                reference(&t, &p),
                "{text:?} like {pattern:?}"
            );
        }
    }
}

//! `like`, `ilike`, `match` and `imatch` patterns, compiled once into a
//! linear-time matcher. Pure.
//!
//! SQL LIKE becomes an anchored regex; every pattern is built by the `regex`
//! crate, whose engines (lazy DFA, PikeVM) never backtrack, so matching costs
//! at most the pattern's size times the text's length. Patterns are capped at
//! `MAX_PATTERN_CHARS` and their compiled programs at `REGEX_SIZE_LIMIT`.

use super::{FilterError, Op};

/// Longest `like`/`ilike`/`match`/`imatch` pattern, in characters. Supabase
/// has no cap (Postgres evaluates it); ours bounds the matcher's size, since
/// matching costs the pattern's size times the text's length at worst.
pub const MAX_PATTERN_CHARS: usize = 256;

/// Compiled-program budget of one pattern: a short pattern with counted
/// repetitions (`a{100}{100}`) must not compile into something huge.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Compiles a `like`/`ilike` (SQL LIKE) or `match`/`imatch` (POSIX-ish regex)
/// pattern into one linear-time matcher, refusing long or oversized ones.
pub(super) fn pattern(op: Op, text: &str) -> Result<regex::Regex, FilterError> {
    if text.chars().count() > MAX_PATTERN_CHARS {
        return Err(FilterError::PatternTooLong(op.name()));
    }
    let (source, fold) = match op {
        Op::Like => (like_to_regex(text), false),
        Op::Ilike => (like_to_regex(text), true),
        Op::Imatch => (text.to_owned(), true),
        _ => (text.to_owned(), false),
    };
    regex::RegexBuilder::new(&source)
        .case_insensitive(fold)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| FilterError::BadRegex(e.to_string()))
}

/// SQL LIKE as an anchored regex: `%` any run, `_` one character, `\` escapes
/// the next; `.` matches newlines too, as `%` does in SQL.
fn like_to_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    out.push_str("(?s)^");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            '\\' => match chars.next() {
                Some(escaped) => out.push_str(&regex::escape(escaped.encode_utf8(&mut [0; 4]))),
                None => out.push_str(&regex::escape("\\")),
            },
            c => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(text: &str, pat: &str, fold: bool) -> bool {
        pattern(if fold { Op::Ilike } else { Op::Like }, pat).unwrap().is_match(text)
    }

    #[test]
    fn like_escapes_and_wildcards_behave_as_in_sql() {
        assert!(like("100%", "100\\%", false));
        assert!(!like("1000", "100\\%", false));
        assert!(like("abc", "%", false));
        assert!(like("", "%", false));
        assert!(!like("ab", "a_c", false));
        assert!(like("ÀBC", "àb%", true));
        assert!(like("a.c", "a.c", false));
        assert!(!like("abc", "a.c", false));
        assert!(like("line one\nline two", "line%two", false));
        assert!(like("(x)[y]{z}+*?", "(x)[y]{z}+*?", false));
        assert!(like("ends with \\", "%\\", false));
    }

    #[test]
    fn a_short_pattern_that_compiles_into_a_huge_program_is_refused() {
        let err = pattern(Op::Match, "(a{100}){100}{100}").unwrap_err();
        assert!(err.to_string().starts_with("invalid regular expression"), "{err}");
    }
}

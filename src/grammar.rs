//! The tokenizer of the filter grammar realtime filters and REST queries
//! share (`col=op.value`, `in.(a,"b,c")`, `or=(a.eq.1,b.gt.2)`). Pure.
//!
//! Values may be double-quoted to hold commas and parentheses; a quote opens
//! only right after `.`, `(` or the separator, and a backslash escapes the
//! next character inside quotes.

/// Splits on `sep` outside parentheses and outside double quotes that open
/// right after `.`, `(` or `sep` (backslash escapes inside quotes).
pub fn split_top_level(text: &str, sep: char) -> Vec<String> {
    let (mut parts, mut cur) = (Vec::new(), String::new());
    let (mut depth, mut in_quotes, mut escaped) = (0usize, false, false);
    let mut prev: Option<char> = None;
    for c in text.chars() {
        if in_quotes {
            in_quotes = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' && (matches!(prev, None | Some('.') | Some('(')) || prev == Some(sep)) {
            in_quotes = true;
        } else if c == '(' {
            depth += 1;
        } else if c == ')' {
            depth = depth.saturating_sub(1);
        } else if c == sep && depth == 0 {
            parts.push(std::mem::take(&mut cur));
            prev = Some(c);
            continue;
        }
        cur.push(c);
        prev = Some(c);
    }
    parts.push(cur);
    parts
}

pub fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_inside_quotes_or_parentheses_do_not_split() {
        assert_eq!(split_top_level(r#"a.eq."x,y",b.in.(1,2)"#, ','), vec![r#"a.eq."x,y""#, "b.in.(1,2)"]);
        assert_eq!(unquote(r#""say \"hi\"""#), r#"say "hi""#);
        assert_eq!(unquote("plain"), "plain");
    }
}

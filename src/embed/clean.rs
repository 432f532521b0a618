//! Text cleaning that reproduces OpenCLIP's `_clean_lower`:
//! `whitespace_clean(basic_clean(text)).lower()`, where `basic_clean` is
//! `ftfy.fix_text`, then Python's `html.unescape` twice, then `strip()`.
//!
//! ftfy is reproduced step by step for its table-driven fixes (HTML entities, C1
//! controls, Latin ligatures, character width, curly quotes, line breaks, terminal
//! escapes, control characters, NFC). Its mojibake repair (`fix_encoding`: guessing that
//! "Ã©" was "é" decoded with the wrong codec) is a heuristic that is not reproduced:
//! text that is already valid Unicode, which is what callers pass, is unchanged by it.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::{Captures, Regex};
use unicode_normalization::UnicodeNormalization;

use super::text_tables::{
    CONTROL_CHARS, FTFY_ENTITIES, HTML5, INVALID_CHARREFS, INVALID_CODEPOINTS, LIGATURES,
    SLOPPY_1252_C1, WIDTH_MAP,
};

/// OpenCLIP's default text cleaning (`clean='lower'`).
pub(crate) fn clean_lower(text: &str) -> String {
    let fixed = ftfy_fix_text(text);
    let once = html_unescape(&fixed);
    let twice = html_unescape(&once);
    // `str.strip()` then `" ".join(s.split())`: splitting already drops the ends.
    let joined = twice.split(py_isspace).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
    joined.to_lowercase()
}

/// Python's `str.isspace()`: Rust's `White_Space` plus the four information separators.
pub(crate) fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn lookup<'a, K: Ord + ?Sized>(table: &'a [(&'a K, &'a str)], key: &K) -> Option<&'a str> {
    table.binary_search_by(|(k, _)| (*k).cmp(key)).ok().and_then(|i| table.get(i)).map(|(_, v)| *v)
}

fn lookup_char(table: &'static [(char, &'static str)], key: char) -> Option<&'static str> {
    table.binary_search_by(|(k, _)| k.cmp(&key)).ok().and_then(|i| table.get(i)).map(|(_, v)| *v)
}

// ---------------------------------------------------------------------------------------
// Python's html.unescape
// ---------------------------------------------------------------------------------------

fn charref_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // The pattern is a constant; it is tested to compile.
        #[allow(clippy::expect_used)]
        Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0C <&#;]{1,32};?)")
            .expect("constant regex")
    })
}

/// Python's `html.unescape`.
pub(crate) fn html_unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    charref_re().replace_all(s, |caps: &Captures<'_>| {
        let body = caps.get(1).map_or("", |m| m.as_str());
        replace_charref(body)
    })
}

fn replace_charref(s: &str) -> String {
    if let Some(num) = s.strip_prefix('#') {
        let (digits, radix) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16),
            None => (num, 10),
        };
        let digits = digits.trim_end_matches(';');
        // Python parses arbitrarily large integers; anything past u64 is "too large".
        let value = u64::from_str_radix(digits, radix).unwrap_or(u64::MAX);
        if let Ok(v32) = u32::try_from(value) {
            if let Ok(i) = INVALID_CHARREFS.binary_search_by(|(k, _)| k.cmp(&v32)) {
                return INVALID_CHARREFS.get(i).map_or("", |(_, v)| v).to_string();
            }
        }
        if (0xD800..=0xDFFF).contains(&value) || value > 0x10FFFF {
            return "\u{FFFD}".to_string();
        }
        let v32 = u32::try_from(value).unwrap_or(0xFFFD);
        if INVALID_CODEPOINTS.binary_search(&v32).is_ok() {
            return String::new();
        }
        return char::from_u32(v32).unwrap_or('\u{FFFD}').to_string();
    }
    if let Some(v) = lookup(HTML5, s) {
        return v.to_string();
    }
    // The longest prefix that is an entity (the HTML5 rule for legacy names without `;`).
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
    for x in (2..bounds.len()).rev() {
        let Some(&cut) = bounds.get(x) else { continue };
        let (head, tail) = s.split_at(cut);
        if let Some(v) = lookup(HTML5, head) {
            return format!("{v}{tail}");
        }
    }
    format!("&{s}")
}

// ---------------------------------------------------------------------------------------
// ftfy.fix_text with the default TextFixerConfig, minus fix_encoding
// ---------------------------------------------------------------------------------------

fn ftfy_entity_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    #[allow(clippy::expect_used)]
    RE.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("constant regex"))
}

fn ansi_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    #[allow(clippy::expect_used)]
    RE.get_or_init(|| Regex::new(r"\x1b\[((?:[0-9]|;)*)([a-zA-Z])").expect("constant regex"))
}

/// `ftfy.fix_text`: the text is fixed line by line; once a line contains `<`, HTML
/// entities are no longer decoded by ftfy (for that line and every later one).
pub(crate) fn ftfy_fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for segment in text.split_inclusive('\n') {
        if unescape && segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let orig = text.clone();
        if unescape {
            text = ftfy_unescape_html(&text).into_owned();
        }
        text = fix_c1_controls(&text);
        text = translate(&text, LIGATURES);
        text = translate(&text, WIDTH_MAP);
        text = uncurl_quotes(&text);
        text = fix_line_breaks(&text);
        text = ansi_re().replace_all(&text, "").into_owned();
        text.retain(|c| CONTROL_CHARS.binary_search(&u32::from(c)).is_err());
        text = text.nfc().collect();
        if text == orig {
            return text;
        }
    }
}

fn ftfy_unescape_html(text: &str) -> Cow<'_, str> {
    ftfy_entity_re().replace_all(text, |caps: &Captures<'_>| {
        let ent = caps.get(0).map_or("", |m| m.as_str());
        if let Some(v) = lookup(FTFY_ENTITIES, ent) {
            v.to_string()
        } else if ent.starts_with("&#") {
            let un = html_unescape(ent);
            if un.contains(';') {
                ent.to_string()
            } else {
                un.into_owned()
            }
        } else {
            ent.to_string()
        }
    })
}

fn fix_c1_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            let cp = u32::from(c);
            if (0x80..0xA0).contains(&cp) {
                usize::try_from(cp - 0x80).ok().and_then(|i| SLOPPY_1252_C1.get(i)).copied().unwrap_or(c)
            } else {
                c
            }
        })
        .collect()
}

fn translate(text: &str, table: &'static [(char, &'static str)]) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match lookup_char(table, c) {
            Some(v) => out.push_str(v),
            None => out.push(c),
        }
    }
    out
}

fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{201c}'..='\u{201f}' => '"',
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
            _ => c,
        })
        .collect()
}

fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_unescape_follows_python() {
        assert_eq!(html_unescape("a &amp; b"), "a & b");
        assert_eq!(html_unescape("&ampx"), "&x");
        assert_eq!(html_unescape("&notit;"), "\u{ac}it;");
        assert_eq!(html_unescape("&#x41;&#66;&#0;&#128;&#xD800;"), "AB\u{fffd}\u{20ac}\u{fffd}");
        assert_eq!(html_unescape("&#99999999999999999999999;"), "\u{fffd}");
        assert_eq!(html_unescape("&bogus;"), "&bogus;");
    }

    #[test]
    fn ftfy_fixes_quotes_ligatures_width_and_controls() {
        assert_eq!(ftfy_fix_text("\u{201c}ﬁne\u{201d} \u{ff21}\u{ff22}\u{3000}x\u{7}"), "\"fine\" AB x");
        assert_eq!(ftfy_fix_text("\x1b[36mblue\x1b[0m"), "blue");
        assert_eq!(ftfy_fix_text("&NTILDE; <b> &amp;"), "&NTILDE; <b> &amp;");
        assert_eq!(ftfy_fix_text("&NTILDE; &amp;"), "\u{d1} &");
    }

    #[test]
    fn clean_lower_collapses_whitespace() {
        assert_eq!(clean_lower("  A\u{a0}\u{2003}b\n\tC\u{1f}d  "), "a b cd");
    }
}

//! Spoken summaries: short, plain sentences a TTS engine can read as they are — no ids, URLs or
//! markdown, at most 200 characters.

/// Longest summary we return.
pub const MAX_SPOKEN: usize = 200;

/// Cleans `s` for speech: drops markdown characters and URLs, collapses whitespace, and cuts at a
/// word boundary before [`MAX_SPOKEN`] characters.
pub fn speakable(s: &str) -> String {
    let words: Vec<&str> = s.split_whitespace().filter(|w| !unspeakable(w)).collect();
    let joined = words.join(" ");
    let cleaned: String = joined
        .chars()
        .filter(|c| !matches!(c, '*' | '_' | '`' | '#' | '[' | ']' | '<' | '>' | '|' | '~'))
        .collect();
    if cleaned.chars().count() <= MAX_SPOKEN {
        return cleaned;
    }
    let mut out = String::new();
    for w in cleaned.split(' ') {
        if out.chars().count() + w.chars().count() + 1 > MAX_SPOKEN - 3 {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    let trimmed = out.trim_end_matches([',', ';', ':', '.', ' ']);
    format!("{trimmed}...")
}

/// Whether a word would be read out as a link or an id: it holds a URL anywhere (also inside
/// brackets or quotes), a UUID, or a long run of hex digits.
fn unspeakable(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    if lower.contains("http://") || lower.contains("https://") || lower.contains("www.") {
        return true;
    }
    let b = word.as_bytes();
    let uuid = b.windows(36).any(|w| {
        w.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    });
    uuid || b.windows(32).any(|w| w.iter().all(u8::is_ascii_hexdigit))
}

/// A quote of user content for speech ("Thanks for reaching out. Can we…"), at most `max` chars.
pub fn snippet(s: &str, max: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out = String::new();
    for w in one_line.split(' ') {
        if out.chars().count() + w.chars().count() + 1 > max {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    format!("{}...", out.trim_end_matches([',', '.', ';', ':']))
}

/// "1 reply" / "3 replies".
pub fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// "a" or "an" before a word.
pub fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// Human list: "A", "A and B", "A, B and C".
pub fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [rest @ .., last] => format!("{} and {}", rest.join(", "), last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_urls_markdown_and_length() {
        assert_eq!(speakable("See **this** https://x.io now"), "See this now");
        assert_eq!(
            speakable(
                "Here (https://x.io/p) or www.x.io, ref 123e4567-e89b-12d3-a456-426614174000."
            ),
            "Here or ref"
        );
        assert_eq!(speakable("Id 0123456789abcdef0123456789ABCDEF ok"), "Id ok");
        assert_eq!(
            speakable("Call 555-0100 at 3:00 PM."),
            "Call 555-0100 at 3:00 PM."
        );
        let long = "word ".repeat(100);
        let s = speakable(&long);
        assert!(s.chars().count() <= MAX_SPOKEN);
        assert!(s.ends_with("..."));
    }

    #[test]
    fn helpers() {
        assert_eq!(count(1, "reply", "replies"), "1 reply");
        assert_eq!(count(3, "reply", "replies"), "3 replies");
        assert_eq!(list(&["a".into(), "b".into(), "c".into()]), "a, b and c");
        assert_eq!(article("email"), "an");
        assert_eq!(snippet("one two three four", 9), "one two...");
    }
}

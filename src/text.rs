//! Text normalisation shared by storage and reference resolution: case- and accent-insensitive
//! forms of names, and the tokens that the name index is built from.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Lower-cases, strips accents and collapses everything that is not a letter or digit into single
/// spaces: "  José  O'Neil " → "jose o neil".
pub fn normalize(s: &str) -> String {
    if s.is_ascii() {
        let mut out = String::with_capacity(s.len());
        let mut pending_space = false;
        // The same steps without decomposition: ASCII has no accents to strip, and a letter's
        // lower case is one byte. Names and references are mostly ASCII, and this runs for
        // every one resolved.
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() {
                if pending_space && !out.is_empty() {
                    out.push(' ');
                }
                pending_space = false;
                out.push(char::from(b.to_ascii_lowercase()));
            } else {
                pending_space = true;
            }
        }
        return out;
    }
    normalize_unicode(s)
}

/// [`normalize`] for any text.
fn normalize_unicode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.nfd().filter(|c| !is_combining_mark(*c)) {
        if c.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.extend(c.to_lowercase());
        } else {
            pending_space = true;
        }
    }
    out
}

/// A user value quoted in an error's `details`: at most `max` characters, control characters
/// shown as spaces, "…" when cut. Unlike speech, it keeps what was sent (underscores, symbols),
/// since a developer reads it to find the mistake.
pub fn clip(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// The distinct tokens of a normalised string.
pub fn tokens(normalized: &str) -> Vec<&str> {
    let mut t: Vec<&str> = normalized.split(' ').filter(|t| !t.is_empty()).collect();
    t.sort_unstable();
    t.dedup();
    t
}

/// The domain part of an email address, lower-cased, or `None` when it has no usable domain.
pub fn email_domain(email: &str) -> Option<String> {
    let (_, domain) = email.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() || !domain.contains('.') {
        return None;
    }
    Some(domain)
}

/// A cheap sanity check, not RFC 5322: one `@`, something before it and a dotted domain after it.
pub fn is_plausible_email(email: &str) -> bool {
    let email = email.trim();
    if email.len() > 254 || email.chars().any(char::is_whitespace) {
        return false;
    }
    match email.split_once('@') {
        Some((local, _)) if !local.is_empty() && email.matches('@').count() == 1 => {
            email_domain(email).is_some()
        }
        _ => false,
    }
}

/// Normalises a domain given by a user ("https://www.Acme.com/about" → "acme.com").
pub fn normalize_domain(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(&s);
    let s = s.split(['/', '?', '#']).next().unwrap_or("");
    let s = s.strip_prefix("www.").unwrap_or(s);
    s.trim_end_matches('.').to_string()
}

/// True when a string looks like a domain rather than a company name.
pub fn looks_like_domain(s: &str) -> bool {
    let d = normalize_domain(s);
    !d.contains(' ') && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The ASCII shortcut of `normalize` gives what decomposing does.
        #[test]
        fn ascii_normalizes_as_unicode_does(s in "[ -~\t\n]{0,40}") {
            proptest::prop_assert_eq!(normalize(&s), normalize_unicode(&s));
        }
    }

    #[test]
    fn normalises_case_accents_and_punctuation() {
        assert_eq!(normalize("  José  O'Neil "), "jose o neil");
        assert_eq!(normalize("SARAH CHEN"), "sarah chen");
        assert_eq!(normalize("Zoë-Ann"), "zoe ann");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn tokens_are_distinct() {
        assert_eq!(tokens("sarah chen sarah"), vec!["chen", "sarah"]);
    }

    #[test]
    fn email_domains() {
        assert_eq!(
            email_domain("Sarah.Chen@Notion.so").as_deref(),
            Some("notion.so")
        );
        assert_eq!(email_domain("nobody"), None);
        assert_eq!(email_domain("a@localhost"), None);
        assert!(is_plausible_email("john@acme.com"));
        assert!(!is_plausible_email("john@@acme.com"));
        assert!(!is_plausible_email("john acme.com"));
        assert!(!is_plausible_email("@acme.com"));
    }

    #[test]
    fn domains() {
        assert_eq!(normalize_domain("https://www.Acme.com/about"), "acme.com");
        assert!(looks_like_domain("notion.so"));
        assert!(!looks_like_domain("Notion"));
    }
}

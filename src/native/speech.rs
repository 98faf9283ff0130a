//! Spoken summaries (DESIGN §20): every sentence the bridge says is built from these helpers and
//! passes [`speakable`] last, so it is plain text a TTS engine can read as it is and that can be
//! embedded in SSML untouched — no `<`, `>` or `&`, no markup, ids, URLs or ISO timestamps, at
//! most 200 characters. Values that users typed (names, notes, replies) go through [`name`],
//! [`quote`] or [`echo`] first: markup and control characters are stripped, the length is
//! capped, and text that does not look like a name is not read back at all.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};

/// Longest summary we return.
pub const MAX_SPOKEN: usize = 200;
/// Longest record name we say (a contact, company or campaign).
pub const MAX_NAME: usize = 60;

/// Cleans a whole sentence for speech: removes markup tags and stray angle brackets, says `&` as
/// "and", drops control characters, markdown characters, URLs, ids and ISO timestamps, collapses
/// whitespace, and cuts at a word boundary before [`MAX_SPOKEN`] characters.
pub fn speakable(s: &str) -> String {
    // Most sentences are already clean ("Sarah Chen is VP of Engineering at Notion. ...");
    // checking that is one pass without allocating, where cleaning makes five copies.
    if already_plain(s, MAX_SPOKEN) && s.split(' ').all(|w| !unspeakable(w)) {
        return s.to_string();
    }
    speakable_in_full(s)
}

/// [`speakable`] without the shortcut for clean text.
fn speakable_in_full(s: &str) -> String {
    let plain = plain_text(s);
    let words: Vec<&str> = plain
        .split_whitespace()
        .filter(|w| !unspeakable(w))
        .collect();
    let joined = tidy(&words.join(" "));
    let cleaned: String = joined
        .chars()
        .filter(|c| !matches!(c, '*' | '_' | '`' | '#' | '[' | ']' | '|' | '~' | '{' | '}'))
        .collect();
    cut(&cleaned, MAX_SPOKEN)
}

/// `s` without markup: tags such as `<break time="5s"/>` are removed whole, any other `<` or `>`
/// is dropped, `&` becomes " and ", and control characters (also the invisible format ones such
/// as zero-width joiners and bidi overrides) become spaces.
fn plain_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '<' => {
                // A tag starts with a letter, `/`, `!` or `?`; swallow it up to its `>` (or to
                // the end of the text, so half a tag is never read out either).
                if chars
                    .peek()
                    .is_some_and(|n| n.is_ascii_alphabetic() || matches!(n, '/' | '!' | '?'))
                {
                    for t in chars.by_ref() {
                        if t == '>' {
                            break;
                        }
                    }
                }
                out.push(' ');
            }
            '>' => out.push(' '),
            '&' => out.push_str(" and "),
            c if c.is_control() || is_format_char(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Whether cleaning `s` (plain text, whitespace collapsed, punctuation joined, markdown
/// characters dropped, cut at `max` characters) would leave it as it is: words separated by
/// single spaces, none before punctuation, and no character that any step removes or changes.
fn already_plain(s: &str, max: usize) -> bool {
    let mut prev = ' ';
    let mut chars = 0;
    for c in s.chars() {
        let kept = match c {
            ' ' => prev != ' ',
            '.' | ',' | ';' | ':' | '!' | '?' => prev != ' ',
            '<' | '>' | '&' | '*' | '_' | '`' | '#' | '[' | ']' | '|' | '~' | '{' | '}' => false,
            c => !c.is_whitespace() && !c.is_control() && !is_format_char(c),
        };
        if !kept {
            return false;
        }
        prev = c;
        chars += 1;
    }
    prev != ' ' && chars <= max
}

/// Joins punctuation back onto the word before it once removed markup left a gap ("B ." → "B.").
fn tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '.' | ',' | ';' | ':' | '!' | '?') && out.ends_with(' ') {
            out.pop();
        }
        out.push(c);
    }
    out
}

/// Unicode format characters (category Cf) that a TTS engine would either read or choke on:
/// zero-width spaces and joiners, bidi controls, the BOM, soft hyphen.
fn is_format_char(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Cuts `s` at a word boundary so it fits in `max` characters, marking the cut with "...".
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out = String::new();
    for w in s.split(' ') {
        if out.chars().count() + w.chars().count() + 1 > max.saturating_sub(3) {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    if out.is_empty() {
        // One very long word (a CJK sentence has no spaces): cut inside it.
        out = s.chars().take(max.saturating_sub(3)).collect();
    }
    let trimmed = out.trim_end_matches([',', ';', ':', '.', ' ']);
    format!("{trimmed}...")
}

/// Whether a word would be read out as a link, an id or a machine timestamp: it holds a URL
/// anywhere (also inside brackets or quotes), a UUID, a long run of hex digits, or an ISO 8601
/// date-time such as `2026-12-01T15:00:00Z`.
fn unspeakable(word: &str) -> bool {
    let b = word.as_bytes();
    // Compared in place rather than on a lower-cased copy: this runs for every word said.
    let holds = |needle: &[u8]| {
        b.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if holds(b"http://") || holds(b"https://") || holds(b"www.") {
        return true;
    }
    let uuid = b.windows(36).any(|w| {
        w.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    });
    let iso = b.windows(13).any(|w| {
        w.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T' || *c == b't',
            _ => c.is_ascii_digit(),
        })
    });
    uuid || iso || b.windows(32).any(|w| w.iter().all(u8::is_ascii_hexdigit))
}

/// A user-supplied value made safe to put in a sentence: plain text, whitespace collapsed, at
/// most `max` characters.
fn clean_value(s: &str, max: usize) -> String {
    // Names read from records are mostly clean already (see `speakable`).
    if already_plain(s, max) {
        return s.to_string();
    }
    clean_value_in_full(s, max)
}

/// [`clean_value`] without the shortcut for clean text.
fn clean_value_in_full(s: &str, max: usize) -> String {
    let plain = plain_text(s);
    let one_line = tidy(&plain.split_whitespace().collect::<Vec<_>>().join(" "));
    let cleaned: String = one_line
        .chars()
        .filter(|c| !matches!(c, '*' | '_' | '`' | '#' | '[' | ']' | '|' | '~' | '{' | '}'))
        .collect();
    cut(cleaned.trim(), max)
}

/// A record's name as spoken ("Sarah Chen", "A and B Corp"): markup and control characters
/// removed, capped at [`MAX_NAME`] characters; "that one" when nothing speakable is left.
pub fn name(s: &str) -> String {
    let n = clean_value(s, MAX_NAME);
    if n.chars().any(char::is_alphanumeric) {
        n
    } else {
        "that one".to_string()
    }
}

/// A quote of someone's text for speech ("Thanks for reaching out. Can we…"), plain and at most
/// `max` characters.
pub fn quote(s: &str, max: usize) -> String {
    clean_value(s, max)
}

/// A quote of user content, kept under its old name for callers outside this module.
pub fn snippet(s: &str, max: usize) -> String {
    quote(s, max)
}

/// What the user asked for, said back only when it reads like a name: letters, digits, spaces
/// and the punctuation names use (`'`, `-`, `.`), at most 6 words and [`MAX_NAME`] characters.
/// Anything else — code, markup, a pasted paragraph — is never echoed; the caller says "that
/// contact" instead.
pub fn echo(s: &str) -> Option<String> {
    let s = s.trim();
    let name_like = !s.is_empty()
        && s.chars().count() <= MAX_NAME
        && s.split_whitespace().count() <= 6
        && s.chars().any(char::is_alphanumeric)
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || matches!(c, '\'' | '’' | '-' | '.'));
    name_like.then(|| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// "1 reply" / "3 replies".
pub fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The non-zero parts of a breakdown, each with its label: `[(3, "active"), (0, "bounced")]` →
/// "3 active". Empty when every part is zero.
pub fn breakdown(parts: &[(u64, &str)]) -> String {
    let said: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, label)| format!("{n} {label}"))
        .collect();
    list(&said)
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

/// Number words for small counts ("the first five"), digits beyond.
pub fn number_word(n: usize) -> String {
    const WORDS: [&str; 11] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    WORDS
        .get(n)
        .map_or_else(|| n.to_string(), |w| (*w).to_string())
}

/// A moment as said to a user in the org's time zone: "today at 3:00 PM", "tomorrow at 9:30 AM",
/// "Tuesday, December 8 at 3:00 PM", and with the year when it is not this year: "Thursday, June
/// 3, 2027 at 3:00 PM". `now` is passed in so the words are testable. "UTC" is added when the
/// zone is UTC, since that is rarely the listener's own clock.
pub fn when<Z: TimeZone>(t: &DateTime<Z>, now: DateTime<Utc>, zone_is_utc: bool) -> String
where
    Z::Offset: std::fmt::Display,
{
    let now_local = now.with_timezone(&t.timezone());
    let day = t.date_naive();
    let today = now_local.date_naive();
    let clock = t.format("%-I:%M %p").to_string();
    let suffix = if zone_is_utc { " UTC" } else { "" };
    let date = if day == today {
        "today".to_string()
    } else if Some(day) == today.checked_add_signed(Duration::days(1)) {
        "tomorrow".to_string()
    } else if day.year() == today.year() {
        t.format("%A, %B %-d").to_string()
    } else {
        t.format("%A, %B %-d, %Y").to_string()
    };
    format!("{date} at {clock}{suffix}")
}

/// [`when`] for a stored RFC 3339 time, read in the offset it carries (the org's zone's offset
/// at that moment when the bridge wrote it). Unparseable input says "at the time you gave".
pub fn when_rfc3339(rfc3339: &str, now: DateTime<Utc>) -> String {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => when(&t, now, t.offset().local_minus_utc() == 0),
        Err(_) => "at the time you gave".to_string(),
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
        assert_eq!(speakable("Due 2026-12-01T15:00:00Z, ok"), "Due ok");
        let long = "word ".repeat(100);
        let s = speakable(&long);
        assert!(s.chars().count() <= MAX_SPOKEN);
        assert!(s.ends_with("..."));
    }

    #[test]
    fn markup_and_ampersands_never_survive() {
        // (input, spoken)
        let table = [
            (
                r#"Eve<break time="5s"/> Tag & Co works at A&B <Corp>."#,
                "Eve Tag and Co works at A and B.",
            ),
            ("<speak>Hi</speak> there", "Hi there"),
            ("1 < 2 and 3 > 2", "1 2 and 3 2"),
            ("Half a tag <prosody rate=", "Half a tag"),
            ("Bell\u{7}\u{0}ring\u{200B}s", "Bell ring s"),
            ("<!-- comment --> ok", "ok"),
        ];
        for (input, spoken) in table {
            assert_eq!(speakable(input), spoken, "{input}");
        }
    }

    #[test]
    fn names_are_plain_and_capped() {
        let table: [(&str, &str); 6] = [
            ("Sarah Chen", "Sarah Chen"),
            (r#"Eve<break time="5s"/>"#, "Eve"),
            ("A&B <Corp>", "A and B"),
            ("  田中  太郎 ", "田中 太郎"),
            ("🚀 Rocket Co", "🚀 Rocket Co"),
            ("<b></b>", "that one"),
        ];
        for (input, spoken) in table {
            assert_eq!(name(input), spoken, "{input}");
        }
        let long = name(&"Bartholomew ".repeat(20));
        assert!(long.chars().count() <= MAX_NAME && long.ends_with("..."));
        let cjk = name(&"名".repeat(100));
        assert_eq!(cjk.chars().count(), MAX_NAME);
    }

    #[test]
    fn echo_only_reads_back_names() {
        assert_eq!(echo(" Sarah  O'Neil "), Some("Sarah O'Neil".to_string()));
        assert_eq!(echo("Jean-Luc Picard"), Some("Jean-Luc Picard".to_string()));
        assert_eq!(echo("Q4 Enterprise"), Some("Q4 Enterprise".to_string()));
        assert_eq!(echo("José Núñez"), Some("José Núñez".to_string()));
        assert_eq!(echo("Robert'); DROP TABLE contacts;--"), None);
        assert_eq!(echo("<script>alert(1)</script>"), None);
        assert_eq!(echo("a b c d e f g"), None);
        assert_eq!(echo("---"), None);
    }

    #[test]
    fn helpers() {
        assert_eq!(count(1, "reply", "replies"), "1 reply");
        assert_eq!(count(3, "reply", "replies"), "3 replies");
        assert_eq!(list(&["a".into(), "b".into(), "c".into()]), "a, b and c");
        assert_eq!(article("email"), "an");
        assert_eq!(snippet("one two three four", 10), "one two...");
        assert_eq!(
            breakdown(&[(3, "active"), (0, "completed"), (1, "bounced")]),
            "3 active and 1 bounced"
        );
        assert_eq!(breakdown(&[(0, "active")]), "");
        assert_eq!(number_word(5), "five");
        assert_eq!(number_word(12), "12");
    }

    #[test]
    fn times_in_words() {
        let now = DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // (time as stored with the org's offset, spoken)
        let table = [
            ("2026-11-29T15:00:00Z", "today at 3:00 PM UTC"),
            ("2026-11-30T09:30:00+01:00", "tomorrow at 9:30 AM"),
            (
                "2026-12-08T15:00:00+01:00",
                "Tuesday, December 8 at 3:00 PM",
            ),
            (
                "2027-06-03T15:00:00+02:00",
                "Thursday, June 3, 2027 at 3:00 PM",
            ),
            ("2026-11-30T00:30:00+09:00", "tomorrow at 12:30 AM"),
            ("soon", "at the time you gave"),
        ];
        for (t, spoken) in table {
            assert_eq!(when_rfc3339(t, now), spoken, "{t}");
        }
        // Late evening in UTC is already tomorrow in Tokyo.
        let late = DateTime::parse_from_rfc3339("2026-11-29T23:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            when_rfc3339("2026-11-30T09:00:00+09:00", late),
            "today at 9:00 AM"
        );
    }
    /// The shortcuts for clean text answer exactly what cleaning in full does, for text made of
    /// the characters each step looks at.
    mod shortcuts {
        use super::super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            let pieces = prop::sample::select(vec![
                "a",
                "Z",
                "é",
                "7",
                " ",
                "  ",
                ".",
                ",",
                "?",
                "<",
                ">",
                "<b>",
                "&",
                "*",
                "_",
                "#",
                "{",
                "\t",
                "\n",
                "\u{200B}",
                "\u{00A0}",
                "\u{3000}",
                "http://x",
                "WWW.",
                "Sarah",
                "Chen",
                "2026-12-01T15:00:00Z",
                "0123456789abcdef0123456789ABCDEF",
                "ß",
            ]);
            prop::collection::vec(pieces, 0..40).prop_map(|p| p.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
            #[test]
            fn speakable_is_speakable_in_full(s in text()) {
                prop_assert_eq!(speakable(&s), speakable_in_full(&s));
            }

            #[test]
            fn clean_value_is_clean_value_in_full(s in text(), max in 0usize..80) {
                prop_assert_eq!(clean_value(&s, max), clean_value_in_full(&s, max));
            }

            #[test]
            fn unspeakable_ignores_ascii_case(s in text()) {
                for w in s.split(' ') {
                    let lower = w.to_ascii_lowercase();
                    let url = ["http://", "https://", "www."].iter().any(|u| lower.contains(u));
                    prop_assert!(!url || unspeakable(w), "{w}");
                }
            }
        }

        #[test]
        fn clean_text_takes_the_shortcut() {
            let s = "Sarah Chen is VP of Engineering at Notion. Status is qualified.";
            assert!(already_plain(s, MAX_SPOKEN));
            assert!(!already_plain("Sarah Chen is VP", 10));
            for dirty in [" a", "a ", "a  b", "a .", "a<b", "a\tb", "", "a\u{200B}"] {
                assert!(!already_plain(dirty, MAX_SPOKEN), "{dirty:?}");
            }
        }
    }
}

//! Words of an utterance: what speech-to-text produced, split into words that keep their
//! spoken form (for names and free text) next to a lower-case form the grammar matches on.

/// One spoken word.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// As spoken, without the punctuation around it ("Chen", "Notion's", "3:30pm").
    pub raw: String,
    /// Lower case, curly quotes made straight, surrounding punctuation gone ("notion's").
    pub norm: String,
    /// The word as it stood in the utterance, punctuation included, for free text.
    pub spoken: String,
    /// The word ended with `:`, `,`, `;` or a dash: a pause that separates parts of a sentence.
    pub pause_after: bool,
}

/// Hesitations that speech-to-text writes down and that never carry meaning.
const FILLERS: &[&str] = &[
    "um", "umm", "uh", "uhh", "uhm", "er", "erm", "ah", "hmm", "mm",
];

fn is_edge_punct(c: char) -> bool {
    matches!(
        c,
        '.' | ','
            | '!'
            | '?'
            | ';'
            | ':'
            | '"'
            | '\''
            | '('
            | ')'
            | '['
            | ']'
            | '“'
            | '”'
            | '‘'
            | '’'
            | '-'
            | '…'
    )
}

/// Splits an utterance into words, dropping hesitations ("um", "uh") and reading an address
/// spelt out by speech-to-text ("john at acme dot com") as the address it names.
pub fn split(text: &str) -> Vec<Word> {
    let mut out: Vec<Word> = Vec::with_capacity(16);
    for piece in text.split_whitespace() {
        let straight: String = piece
            .chars()
            .map(|c| if c == '’' || c == '‘' { '\'' } else { c })
            .collect();
        let raw = straight.trim_matches(is_edge_punct);
        if raw.is_empty() {
            // A lone dash or colon between words is a pause.
            if let Some(last) = out.last_mut() {
                last.pause_after = true;
            }
            continue;
        }
        let norm = raw.to_lowercase();
        if FILLERS.contains(&norm.as_str()) {
            continue;
        }
        let tail = straight.trim_end_matches(['"', '\'', ')', ']']);
        let pause_after = tail.ends_with([':', ',', ';', '-']);
        out.push(Word {
            raw: raw.to_string(),
            norm,
            spoken: piece.to_string(),
            pause_after,
        });
    }
    join_spelled_emails(out)
}

/// "john at acme dot com" → "john@acme.com": STT writes addresses out in words.
fn join_spelled_emails(words: Vec<Word>) -> Vec<Word> {
    const TLDS: &[&str] = &["com", "io", "so", "co", "org", "net", "ai", "dev", "app"];
    let n = words.len();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        if i + 4 < n
            && words[i + 1].norm == "at"
            && words[i + 3].norm == "dot"
            && TLDS.contains(&words[i + 4].norm.as_str())
            && words[i]
                .norm
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.')
            && words[i + 2].norm.chars().all(char::is_alphanumeric)
        {
            let addr = format!(
                "{}@{}.{}",
                words[i].norm,
                words[i + 2].norm,
                words[i + 4].norm
            );
            out.push(Word {
                raw: addr.clone(),
                norm: addr.clone(),
                spoken: addr,
                pause_after: words[i + 4].pause_after,
            });
            i += 5;
            continue;
        }
        out.push(words[i].clone());
        i += 1;
    }
    out
}

/// True when `words` begin with `phrase` (space-separated lower-case words).
pub fn starts_with(words: &[Word], phrase: &str) -> bool {
    strip(words, phrase).is_some()
}

/// `words` after `phrase`, when they begin with it.
pub fn strip<'a>(words: &'a [Word], phrase: &str) -> Option<&'a [Word]> {
    let mut rest = words;
    for p in phrase.split(' ') {
        let (first, tail) = rest.split_first()?;
        if first.norm != p {
            return None;
        }
        rest = tail;
    }
    Some(rest)
}

/// `words` after the first of `phrases` they begin with.
pub fn strip_any<'a>(words: &'a [Word], phrases: &[&str]) -> Option<&'a [Word]> {
    phrases.iter().find_map(|p| strip(words, p))
}

/// Drops any of `phrases` from the front, repeatedly.
pub fn skip_all<'a>(mut words: &'a [Word], phrases: &[&str]) -> &'a [Word] {
    while let Some(rest) = strip_any(words, phrases) {
        if rest.len() == words.len() {
            break;
        }
        words = rest;
    }
    words
}

/// `words` without a trailing `phrase`.
pub fn strip_suffix<'a>(words: &'a [Word], phrase: &str) -> Option<&'a [Word]> {
    let n = phrase.split(' ').count();
    if words.len() < n {
        return None;
    }
    let (head, tail) = words.split_at(words.len() - n);
    strip(tail, phrase).map(|_| head)
}

/// Splits at the first occurrence of any of `phrases` (at position ≥ 1): what comes before,
/// what comes after.
pub fn split_first<'a>(words: &'a [Word], phrases: &[&str]) -> Option<(&'a [Word], &'a [Word])> {
    (1..words.len()).find_map(|i| {
        let tail = &words[i..];
        phrases
            .iter()
            .find_map(|p| strip(tail, p))
            .map(|after| (&words[..i], after))
    })
}

/// Splits at the last occurrence of any of `phrases` (at position ≥ 1).
pub fn split_last<'a>(words: &'a [Word], phrases: &[&str]) -> Option<(&'a [Word], &'a [Word])> {
    (1..words.len()).rev().find_map(|i| {
        let tail = &words[i..];
        phrases
            .iter()
            .find_map(|p| strip(tail, p))
            .map(|after| (&words[..i], after))
    })
}

/// The index of the first word that ends with a pause (`:`, `,`), if any.
pub fn first_pause(words: &[Word]) -> Option<usize> {
    words.iter().position(|w| w.pause_after)
}

/// A name or title as spoken: articles and possessives dropped, words joined by spaces.
pub fn name(words: &[Word]) -> Option<String> {
    let words = skip_all(words, &["the", "a", "an", "my", "our"]);
    let mut parts: Vec<&str> = words.iter().map(|w| w.raw.as_str()).collect();
    if let Some(last) = parts.last_mut() {
        *last = last
            .strip_suffix("'s")
            .or_else(|| last.strip_suffix("’s"))
            .unwrap_or(last);
    }
    let joined = parts.join(" ");
    let joined = joined.trim();
    (!joined.is_empty()).then(|| joined.to_string())
}

/// Free text as spoken (a note, a message body), with the sentence's closing punctuation and
/// a leading pause mark dropped.
pub fn free_text(words: &[Word]) -> Option<String> {
    let joined = words
        .iter()
        .map(|w| w.spoken.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let t = joined
        .trim_start_matches([':', ',', '-', ' ', ';'])
        .trim_end_matches(['.', '!', '?', ' ', ',', ';', ':'])
        .trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// A small count spoken as digits or a word ("5", "five").
pub fn number(w: &Word) -> Option<u32> {
    if let Ok(n) = w.norm.parse::<u32>() {
        return Some(n);
    }
    const WORDS: &[&str] = &[
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    if let Some(n) = WORDS.iter().position(|x| *x == w.norm) {
        return u32::try_from(n).ok();
    }
    match w.norm.as_str() {
        "a" | "an" => Some(1),
        "thirty" => Some(30),
        "forty" => Some(40),
        "fifty" => Some(50),
        "sixty" => Some(60),
        "ninety" => Some(90),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norms(t: &str) -> Vec<String> {
        split(t).into_iter().map(|w| w.norm).collect()
    }

    #[test]
    fn drops_fillers_and_edge_punctuation() {
        assert_eq!(
            norms("Um, who is uh Sarah Chen?"),
            ["who", "is", "sarah", "chen"]
        );
        assert_eq!(norms("Notion’s"), ["notion's"]);
    }

    #[test]
    fn pauses_are_marked() {
        let w = split("note on John: met him");
        assert!(w[2].pause_after);
        assert!(!w[1].pause_after);
        let w = split("note on John - met him");
        assert!(w[2].pause_after);
    }

    #[test]
    fn spelled_addresses_become_addresses() {
        assert_eq!(
            norms("look up john at acme dot com please"),
            ["look", "up", "john@acme.com", "please"]
        );
        // "at" without a spelled domain stays a word.
        assert_eq!(norms("sarah at notion"), ["sarah", "at", "notion"]);
    }

    #[test]
    fn names_and_text() {
        let w = split("the Seed founders campaign's");
        assert_eq!(name(&w).as_deref(), Some("Seed founders campaign"));
        let w = split(": Met after the demo. ");
        assert_eq!(free_text(&w).as_deref(), Some("Met after the demo"));
        assert_eq!(name(&split("the")), None);
    }

    #[test]
    fn splitting() {
        let w = split("add john to the seed to founders");
        let (a, b) = split_last(&w, &["to"]).unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!(b[0].norm, "founders");
        let (a, _) = split_first(&w, &["to"]).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(number(&split("five")[0]), Some(5));
        assert_eq!(number(&split("12")[0]), Some(12));
    }
}

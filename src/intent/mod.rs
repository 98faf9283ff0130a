//! The built-in intent parser (DESIGN §19): an English utterance, as speech-to-text wrote it,
//! becomes one of the 17 native actions with its fields as spoken — names are left for the
//! pipeline's resolver to match against the org's records — or a yes/no answer to a question,
//! or nothing recognised. Deterministic, no network, no allocation-heavy machinery: a handful
//! of phrase rules over lower-cased words, tried in a fixed order.
//!
//! Dates are read in two steps: the grammar keeps what was said ("next Tuesday at 10am"), and
//! [`Intent::resolve`] places it on the calendar with an injected [`Clock`] (now and the org's
//! time zone), so a turn without a date never needs the time zone at all.

pub mod time;
pub mod words;

use serde::Serialize;
use serde_json::Value;

pub use self::time::Clock;
use self::time::{find_since, parse_when, rfc3339_local, starts_when, Since, When};
use self::words::{
    first_pause, free_text, name, number, skip_all, split, split_first, strip, strip_any,
    strip_suffix, Word,
};

/// What to say when nothing was recognised: a few things one can say (≤ 200 characters).
pub const HINT: &str = "Sorry, I didn't catch that. You can say things like: who is Sarah Chen, \
    add John to Seed founders, how is Seed founders doing, or book a call with John tomorrow at 3pm.";

/// An action as a client would have sent it: `type` plus its fields, references as spoken.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpokenAction {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(rename = "personName", skip_serializing_if = "Option::is_none")]
    pub person_name: Option<String>,
    #[serde(rename = "contactRef", skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    #[serde(rename = "campaignRef", skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(rename = "minIntentScore", skip_serializing_if = "Option::is_none")]
    pub min_intent_score: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(rename = "unreadOnly", skip_serializing_if = "Option::is_none")]
    pub unread_only: Option<bool>,
    #[serde(rename = "startTime", skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(rename = "durationMinutes", skip_serializing_if = "Option::is_none")]
    pub duration_minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl SpokenAction {
    fn of(kind: &'static str) -> Self {
        SpokenAction {
            kind,
            ..Default::default()
        }
    }

    /// The action object, ready for `native::action::parse_action`.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A recognised action, its dates not yet placed on the calendar.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub action: SpokenAction,
    /// Another reading of the same words, tried when the first names nothing in the org
    /// ("tell me about Acme": a company, or else a person called Acme).
    pub alternative: Option<SpokenAction>,
    start: Option<When>,
    since: Option<Since>,
}

impl Intent {
    fn new(action: SpokenAction) -> Self {
        Intent {
            action,
            alternative: None,
            start: None,
            since: None,
        }
    }

    /// True when the utterance named a date or time, so [`Intent::resolve`] needs the org's
    /// clock.
    pub fn needs_clock(&self) -> bool {
        self.start.is_some() || self.since.is_some()
    }

    /// Places spoken dates on the calendar of `clock`.
    pub fn resolve(mut self, clock: &Clock) -> (SpokenAction, Option<SpokenAction>) {
        if let Some(when) = self.start {
            self.action.start_time = when.resolve(clock).map(|t| rfc3339_local(t, clock));
        }
        if let Some(since) = self.since {
            self.action.since = Some(since.resolve(clock).to_string());
        }
        (self.action, self.alternative)
    }
}

/// What an utterance means.
#[derive(Debug, Clone, PartialEq)]
pub enum Understanding {
    Action(Box<Intent>),
    /// "yes", "yes, do it", "confirm" (true); "no", "cancel" (false).
    Confirm(bool),
    Unrecognized,
}

/// One phrase rule: the intent it reads, or `None` when the words are not its kind.
type Rule = fn(&[Word]) -> Option<Intent>;

/// Reads one utterance.
pub fn understand(text: &str) -> Understanding {
    let all = split(text);
    let w = politeness_off(&all);
    if w.is_empty() {
        return Understanding::Unrecognized;
    }
    if let Some(yes) = confirmation(w) {
        return Understanding::Confirm(yes);
    }
    let rules: [Rule; 15] = [
        undo,
        note,
        mark_status,
        pause_resume,
        remove,
        add,
        book,
        send,
        draft,
        stats,
        inbox,
        signals,
        research,
        enrich,
        lookup,
    ];
    rules
        .iter()
        .find_map(|rule| rule(w))
        .map_or(Understanding::Unrecognized, |i| {
            Understanding::Action(Box::new(i))
        })
}

/// Only the yes/no reading ("yes, do it" → `Some(true)`), for a turn that answers a question.
pub fn confirmation_of(text: &str) -> Option<bool> {
    let all = split(text);
    confirmation(politeness_off(&all))
}

/// Drops the polite or hesitant lead-ins and tails that carry no meaning.
fn politeness_off(words: &[Word]) -> &[Word] {
    const LEADS: &[&str] = &[
        "hey pilot",
        "hey",
        "hi",
        "pilot",
        "ok so",
        "okay so",
        "so",
        "alright",
        "all right",
        "please",
        "can you please",
        "can you",
        "could you please",
        "could you",
        "would you",
        "will you",
        "i want to",
        "i want you to",
        "i'd like to",
        "i would like to",
        "i need to",
        "i need you to",
        "i wanna",
        "let's",
        "lets",
        "go ahead and",
        "quickly",
        "quick",
        "just",
        "and",
    ];
    let mut w = skip_all(words, LEADS);
    // "okay" alone is an answer; "okay, add …" is a lead-in.
    if w.len() > 3 {
        w = skip_all(w, &["ok", "okay"]);
        w = skip_all(w, LEADS);
    }
    loop {
        let before = w.len();
        for tail in ["please", "for me", "thanks", "thank you", "right now"] {
            if let Some(head) = strip_suffix(w, tail) {
                if !head.is_empty() {
                    w = head;
                }
            }
        }
        if w.len() == before {
            return w;
        }
    }
}

fn confirmation(w: &[Word]) -> Option<bool> {
    const NO: &[&str] = &[
        "no",
        "nope",
        "nah",
        "cancel",
        "don't",
        "dont",
        "not",
        "never",
        "mind",
        "nevermind",
        "stop",
        "forget",
        "abort",
        "it",
        "that",
        "thanks",
        "do",
        "this",
        "please",
    ];
    const NO_MARKS: &[&str] = &[
        "no",
        "nope",
        "nah",
        "cancel",
        "don't",
        "dont",
        "not",
        "never",
        "nevermind",
        "forget",
        "abort",
    ];
    const YES: &[&str] = &[
        "yes",
        "yeah",
        "yep",
        "yup",
        "ya",
        "sure",
        "confirm",
        "confirmed",
        "do",
        "it",
        "go",
        "ahead",
        "ok",
        "okay",
        "correct",
        "that's",
        "right",
        "affirmative",
        "sounds",
        "good",
        "for",
        "absolutely",
        "definitely",
        "thing",
        "please",
        "that",
        "send",
        "book",
        "i",
    ];
    const YES_MARKS: &[&str] = &[
        "yes",
        "yeah",
        "yep",
        "yup",
        "ya",
        "sure",
        "confirm",
        "confirmed",
        "do",
        "go",
        "ok",
        "okay",
        "correct",
        "right",
        "affirmative",
        "good",
        "absolutely",
        "definitely",
    ];
    if w.is_empty() || w.len() > 5 {
        return None;
    }
    let has = |set: &[&str]| w.iter().any(|x| set.contains(&x.norm.as_str()));
    let all = |set: &[&str]| w.iter().all(|x| set.contains(&x.norm.as_str()));
    if all(NO) && has(NO_MARKS) {
        return Some(false);
    }
    if all(YES) && has(YES_MARKS) {
        return Some(true);
    }
    None
}

// ---- shared pieces ----------------------------------------------------------------------------

const CAMPAIGN_WORDS: &[&str] = &["campaign", "sequence", "cadence", "list", "campaigns"];
const COMPANY_CUES: &[&str] = &[
    "inc",
    "corp",
    "corporation",
    "llc",
    "ltd",
    "labs",
    "company",
    "co",
    "gmbh",
    "technologies",
    "software",
    "group",
];

/// A campaign name: "the Seed founders campaign" → "Seed founders".
fn campaign(words: &[Word]) -> Option<String> {
    let mut w = skip_all(words, &["the", "a", "our", "my", "campaign", "sequence"]);
    while let Some(last) = w.last() {
        if CAMPAIGN_WORDS.contains(&last.norm.as_str()) && w.len() > 1 {
            w = &w[..w.len() - 1];
        } else {
            break;
        }
    }
    name(w)
}

/// "Sarah Chen at Notion" → ("Sarah Chen", Some("Notion")).
fn contact_at(words: &[Word]) -> (Option<String>, Option<String>) {
    let words = skip_all(words, &["contact", "the contact", "person"]);
    match words::split_last(words, &["over at", "at", "from", "of", "with"]) {
        Some((who, company)) if !company.is_empty() && !who.is_empty() => {
            let company = skip_all(company, &["the company", "company"]);
            (name(who), name(company))
        }
        _ => (name(words), None),
    }
}

fn is_company_like(words: &[Word]) -> bool {
    words.iter().any(|w| {
        COMPANY_CUES.contains(&w.norm.as_str())
            || (w.norm.contains('.')
                && !w.norm.contains('@')
                && crate::text::looks_like_domain(&w.norm))
    })
}

/// An action about a contact, with "at Company" read off the end.
fn about_contact(kind: &'static str, words: &[Word]) -> Option<SpokenAction> {
    let (contact, company) = contact_at(words);
    Some(SpokenAction {
        contact: Some(contact?),
        company,
        ..SpokenAction::of(kind)
    })
}

/// How many leading words of `words` are a person's name when nothing marks where it ends:
/// capitalised words when the transcript has capitals, otherwise up to two words, stopping
/// before a verb or a small word ("John prefers email" → 1).
fn name_span(words: &[Word]) -> usize {
    const CLAUSE: &[&str] = &[
        "is",
        "was",
        "said",
        "says",
        "wants",
        "wanted",
        "prefers",
        "preferred",
        "has",
        "had",
        "likes",
        "liked",
        "needs",
        "needed",
        "asked",
        "asks",
        "will",
        "would",
        "can",
        "could",
        "met",
        "mentioned",
        "called",
        "told",
        "thinks",
        "thought",
        "loves",
        "hates",
        "doesn't",
        "didn't",
        "does",
        "did",
        "isn't",
        "wasn't",
        "agreed",
        "plans",
        "works",
        "moved",
        "just",
        "also",
        "already",
        "seems",
        "got",
        "gets",
        "sent",
        "replied",
        "responded",
        "owns",
        "runs",
        "leads",
        "should",
        "might",
        "may",
        "left",
        "joined",
        "signed",
        "booked",
        "confirmed",
        "and",
        "to",
        "on",
        "in",
        "the",
        "a",
        "about",
        "is",
        "wants",
        "want",
        "won't",
        "can't",
        "loved",
        "hated",
        "went",
        "uses",
        "used",
        "prefer",
        "cares",
        "he",
        "she",
        "they",
        "we",
        "i",
        "his",
        "her",
        "their",
        "it",
    ];
    let has_capitals = words.iter().any(|w| w.raw.starts_with(char::is_uppercase))
        && words
            .iter()
            .skip(1)
            .any(|w| w.raw.starts_with(char::is_lowercase));
    if has_capitals {
        let n = words
            .iter()
            .take(3)
            .take_while(|w| w.raw.starts_with(char::is_uppercase))
            .count();
        if n > 0 {
            return n;
        }
    }
    match words {
        [] => 0,
        [_] => 1,
        [_, second, ..] if CLAUSE.contains(&second.norm.as_str()) => 1,
        [first, ..] if first.norm.contains('@') => 1,
        _ => 2,
    }
}

// ---- the rules, in the order they are tried ------------------------------------------------

fn undo(w: &[Word]) -> Option<Intent> {
    let phrase = [
        "undo",
        "scratch that",
        "take that back",
        "revert that",
        "revert the last",
        "revert my last",
        "reverse that",
        "reverse the last",
        "cancel the last",
        "cancel my last",
        "cancel that last",
        "roll back",
        "rollback",
        "un do",
    ];
    let rest = strip_any(w, &phrase)?;
    (rest.len() <= 5).then(|| Intent::new(SpokenAction::of("undo_last")))
}

fn note(w: &[Word]) -> Option<Intent> {
    let lead = [
        "add a note to",
        "add a note on",
        "add a note for",
        "add a note about",
        "add note to",
        "add note on",
        "add note for",
        "put a note on",
        "leave a note on",
        "leave a note for",
        "log a note on",
        "log a note for",
        "log a note about",
        "make a note on",
        "make a note for",
        "make a note about",
        "write a note on",
        "write a note for",
        "jot down for",
        "jot down on",
        "jot a note on",
        "note on",
        "note for",
        "note about",
        "note to",
        "new note on",
        "new note for",
        "quick note on",
        "quick note for",
    ];
    if let Some(rest) = strip_any(w, &lead) {
        return note_about(rest);
    }
    let clause = [
        "remember that",
        "make a note that",
        "note that",
        "remember",
        "keep in mind that",
        "log that",
    ];
    let rest = strip_any(w, &clause)?;
    let span = name_span(rest);
    if span == 0 || span >= rest.len() {
        return None;
    }
    Some(Intent::new(SpokenAction {
        contact: name(&rest[..span]),
        note: free_text(rest),
        ..SpokenAction::of("note_on_contact")
    }))
}

/// "John Smith: met at the conference", "John saying he's in", "John that he's in".
fn note_about(rest: &[Word]) -> Option<Intent> {
    let (who, text) = if let Some(i) = first_pause(rest).filter(|i| *i + 1 < rest.len()) {
        (&rest[..=i], &rest[i + 1..])
    } else if let Some((who, text)) =
        split_first(rest, &["saying", "that says", "that", "says", "reading"])
    {
        (who, text)
    } else {
        let span = name_span(rest);
        (&rest[..span], &rest[span..])
    };
    let (contact, company) = contact_at(who);
    // Without text ("note on John") the note is missing, and the user is asked for it.
    Some(Intent::new(SpokenAction {
        contact: Some(contact?),
        company,
        note: free_text(text),
        ..SpokenAction::of("note_on_contact")
    }))
}

/// A contact status at the end of `w`, and the words before it.
fn status_suffix(w: &[Word]) -> Option<(&'static str, &[Word])> {
    const STATUSES: &[(&str, &str)] = &[
        ("not interested", "not_interested"),
        ("no longer interested", "not_interested"),
        ("uninterested", "not_interested"),
        ("not_interested", "not_interested"),
        ("meeting booked", "meeting_booked"),
        ("meeting_booked", "meeting_booked"),
        ("disqualified", "disqualified"),
        ("qualified", "qualified"),
        ("interested", "interested"),
        ("contacted", "contacted"),
        ("replied", "replied"),
        ("new", "new"),
        ("a new lead", "new"),
        ("a qualified lead", "qualified"),
        ("qualified lead", "qualified"),
    ];
    STATUSES
        .iter()
        .find_map(|(spoken, wire)| strip_suffix(w, spoken).map(|head| (*wire, head)))
}

fn mark_status(w: &[Word]) -> Option<Intent> {
    for (verb, status) in [
        ("disqualify", "disqualified"),
        ("dq", "disqualified"),
        ("qualify", "qualified"),
    ] {
        if let Some(rest) = strip(w, verb) {
            let rest = strip_suffix(rest, "as a lead")
                .or_else(|| strip_suffix(rest, "as lead"))
                .unwrap_or(rest);
            let mut a = about_contact("mark_status", rest)?;
            a.status = Some(status);
            return Some(Intent::new(a));
        }
    }
    let (status, head) = status_suffix(w)?;
    let verbs = [
        "mark", "set", "change", "update", "move", "flag", "switch", "put", "make", "tag",
    ];
    let (who, by_verb) = match strip_any(w, &verbs) {
        Some(_) => (&head[1..], true),
        None => (head, false),
    };
    let mut who = who;
    // "as", "to", "status to", "'s status to", "is now"
    for tail in [
        "as",
        "to",
        "as a",
        "status to",
        "status as",
        "status",
        "as being",
        "is now",
        "is",
        "was",
        "are",
        "now",
    ] {
        if let Some(h) = strip_suffix(who, tail) {
            who = h;
        }
    }
    for tail in ["status", "'s status", "the status of"] {
        if let Some(h) = strip_suffix(who, tail) {
            who = h;
        }
    }
    who = skip_all(who, &["the status of", "status of", "status for"]);
    if !by_verb && (who.len() > 4 || who.len() == head.len()) {
        // "Sarah is qualified" needs its "is": without a verb or a copula it is not a command.
        return None;
    }
    let mut a = about_contact("mark_status", who)?;
    a.status = Some(status);
    Some(Intent::new(a))
}

fn pause_resume(w: &[Word]) -> Option<Intent> {
    let pause = [
        "pause",
        "hold",
        "suspend",
        "halt",
        "freeze",
        "stop",
        "hold off on",
    ];
    let resume = [
        "resume",
        "unpause",
        "un-pause",
        "un pause",
        "restart",
        "reactivate",
        "re-activate",
        "continue",
        "activate",
        "unfreeze",
    ];
    let (kind, rest) = if let Some(rest) = strip_any(w, &pause) {
        ("pause_campaign", rest)
    } else if let Some(rest) = strip_any(w, &resume) {
        ("resume_campaign", rest)
    } else if let Some(rest) = strip(w, "put").and_then(|r| strip_suffix(r, "on hold")) {
        ("pause_campaign", rest)
    } else if let Some(rest) = strip_any(w, &["turn", "switch", "start"]) {
        let rest = strip_suffix(rest, "back on")
            .or_else(|| strip_suffix(rest, "back up"))
            .or_else(|| strip_suffix(rest, "again"))
            .or_else(|| strip_suffix(rest, "on again"))?;
        ("resume_campaign", rest)
    } else if let Some(rest) = strip_any(w, &["turn off", "switch off"]) {
        ("pause_campaign", rest)
    } else {
        return None;
    };
    let rest = strip_suffix(rest, "again")
        .or_else(|| strip_suffix(rest, "for now"))
        .or_else(|| strip_suffix(rest, "for a bit"))
        .unwrap_or(rest);
    Some(Intent::new(SpokenAction {
        // "pause" alone: the campaign is missing, and the user is asked for it.
        campaign: match rest.is_empty() {
            true => None,
            false => Some(campaign(rest)?),
        },
        ..SpokenAction::of(kind)
    }))
}

fn contact_and_campaign(
    kind: &'static str,
    w: &[Word],
    verbs: &[&str],
    seps: &[&str],
) -> Option<Intent> {
    let rest = strip_any(w, verbs)?;
    let Some((who, which)) = split_first(rest, seps) else {
        // "add John": a campaign action missing its campaign, so the user is asked for it.
        // Only for a short name, so "add a meeting with John" still reaches its own rule.
        const OTHER: &[&str] = &["a", "an", "meeting", "call", "demo", "note", "me", "us"];
        const PLAIN_VERBS: &[&str] = &["add", "ad", "enroll", "enrol", "remove", "unenroll"];
        if (1..=3).contains(&rest.len())
            && w.first()
                .is_some_and(|v| PLAIN_VERBS.contains(&v.norm.as_str()))
            && !rest.iter().any(|x| OTHER.contains(&x.norm.as_str()))
        {
            let (contact, company) = contact_at(rest);
            return Some(Intent::new(SpokenAction {
                contact: Some(contact?),
                company,
                ..SpokenAction::of(kind)
            }));
        }
        return None;
    };
    let who = strip_suffix(who, "up").unwrap_or(who);
    let (contact, company) = contact_at(who);
    Some(Intent::new(SpokenAction {
        contact: Some(contact?),
        company,
        campaign: Some(campaign(which)?),
        ..SpokenAction::of(kind)
    }))
}

fn remove(w: &[Word]) -> Option<Intent> {
    contact_and_campaign(
        "remove_from_campaign",
        w,
        &[
            "remove",
            "take",
            "drop",
            "pull",
            "unenroll",
            "un-enroll",
            "kick",
            "delete",
            "get",
        ],
        &["off of", "out of", "off", "from"],
    )
}

fn add(w: &[Word]) -> Option<Intent> {
    contact_and_campaign(
        "add_to_campaign",
        w,
        &[
            "add",
            // Speech-to-text's homophone of "add"; only ever read as the first word.
            "ad",
            "put",
            "enroll",
            "enrol",
            "sign",
            "include",
            "stick",
            "throw",
            "drop",
            "subscribe",
        ],
        &["to", "into", "in", "onto", "on", "for"],
    )
}

/// "45 minute", "half an hour", "an hour", "90 min": a length in minutes and the words it
/// took.
fn duration_at(w: &[Word]) -> Option<(u32, usize)> {
    let at = |k: usize| w.get(k).map(|x| x.norm.as_str());
    if let Some(word) = at(0) {
        // "45-minute", "45min"
        for unit in ["-minute", "-minutes", "-min", "min", "mins"] {
            if let Some(n) = word.strip_suffix(unit).and_then(|n| n.parse::<u32>().ok()) {
                return Some((n, 1));
            }
        }
        if let Some(n) = word
            .strip_suffix("-hour")
            .and_then(|n| n.parse::<u32>().ok())
        {
            return Some((n * 60, 1));
        }
    }
    match (at(0), at(1), at(2)) {
        (Some("half"), Some("an" | "a"), Some("hour")) => return Some((30, 3)),
        (Some("half"), Some("hour" | "hour-long"), _) => return Some((30, 2)),
        (Some("an" | "one" | "a"), Some("hour" | "hour-long"), _) => return Some((60, 2)),
        (Some("hour"), Some("long"), _) => return Some((60, 2)),
        _ => {}
    }
    let first = w.first()?;
    let n = number(first).filter(|_| !matches!(first.norm.as_str(), "a" | "an"))?;
    let mut took = 1;
    // "forty five"
    if let Some(extra) = w.get(1).and_then(number).filter(|e| *e < 10 && n >= 20) {
        if matches!(at(2), Some("minute" | "minutes" | "min" | "mins")) {
            return Some((n + extra, 3));
        }
    }
    match at(took) {
        Some("minute" | "minutes" | "min" | "mins" | "minute-long") => took += 1,
        Some("hour" | "hours" | "hour-long") => return Some((n * 60, 2)),
        _ => return None,
    }
    Some((n, took))
}

fn book(w: &[Word]) -> Option<Intent> {
    let verbs = [
        "book", "schedule", "set up", "setup", "arrange", "organize", "organise", "get", "put",
        "plan", "add",
    ];
    let nouns = [
        "meeting",
        "call",
        "demo",
        "chat",
        "sync",
        "intro",
        "catch up",
        "catch-up",
        "catchup",
        "session",
        "coffee",
        "video call",
        "zoom",
        "meet",
        "appointment",
        "one on one",
    ];
    let rest = if let Some(rest) = strip_any(w, &["meet with", "meet", "call with"]) {
        rest
    } else {
        let rest = strip_any(w, &verbs)?;
        let rest = skip_all(
            rest,
            &["in", "me", "us", "a", "an", "the", "quick", "short"],
        );
        let mut duration = None;
        let mut rest = rest;
        if let Some((mins, took)) = duration_at(rest) {
            duration = Some(mins);
            rest = &rest[took..];
        }
        let after = strip_any(rest, &nouns)?;
        return book_with(after, duration);
    };
    book_with(rest, None)
}

fn book_with(mut rest: &[Word], mut duration: Option<u32>) -> Option<Intent> {
    // A time may come before "with": "a call tomorrow at 3pm with John".
    let (mut when, took) = parse_when(rest);
    rest = &rest[took..];
    rest = strip_any(rest, &["with", "for"])?;
    // The contact ends where the time or the topic begins.
    let stops = [
        "about",
        "to discuss",
        "regarding",
        "re",
        "to talk about",
        "to go over",
    ];
    let end = (0..rest.len())
        .find(|&i| {
            (took == 0 && starts_when(&rest[i..]))
                || strip_any(&rest[i..], &stops).is_some()
                || strip(&rest[i..], "for").is_some_and(|r| duration_at(r).is_some())
        })
        .unwrap_or(rest.len());
    let (contact, company) = contact_at(&rest[..end]);
    let mut tail = &rest[end..];
    let mut title = None;
    while !tail.is_empty() {
        if let Some(r) = strip(tail, "for").filter(|r| duration_at(r).is_some()) {
            if let Some((mins, n)) = duration_at(r) {
                duration = Some(mins);
                tail = &r[n..];
                continue;
            }
        }
        if took == 0 && when == When::default() {
            let (w2, n) = parse_when(tail);
            if n > 0 {
                when = w2;
                tail = &tail[n..];
                continue;
            }
        }
        if let Some(r) = strip_any(tail, &stops) {
            // The topic runs to the end, or to a time spoken after it.
            let cut = (0..r.len())
                .find(|&i| when == When::default() && starts_when(&r[i..]))
                .unwrap_or(r.len());
            title = free_text(&r[..cut]);
            tail = &r[cut..];
            continue;
        }
        break;
    }
    let mut intent = Intent::new(SpokenAction {
        contact: Some(contact?),
        company,
        duration_minutes: duration,
        title,
        ..SpokenAction::of("book_meeting")
    });
    intent.start = (when != When::default()).then_some(when);
    Some(intent)
}

/// Channel words in a message's header.
fn channel_in(w: &[Word]) -> Option<&'static str> {
    let words: Vec<&str> = w.iter().map(|x| x.norm.as_str()).collect();
    let linkedin = words.iter().enumerate().any(|(i, x)| {
        matches!(*x, "linkedin" | "inmail" | "dm")
            || (*x == "linked" && words.get(i + 1) == Some(&"in"))
    });
    if linkedin {
        Some("linkedin")
    } else if words
        .iter()
        .any(|x| matches!(*x, "email" | "e-mail" | "mail"))
    {
        Some("email")
    } else {
        None
    }
}

/// The contact in a message's header: everything that is not a message word.
fn header_contact(w: &[Word]) -> (Option<String>, Option<String>) {
    const NOISE: &[&str] = &[
        "a",
        "an",
        "the",
        "quick",
        "short",
        "email",
        "e-mail",
        "mail",
        "message",
        "note",
        "linkedin",
        "linked",
        "inmail",
        "dm",
        "on",
        "via",
        "over",
        "to",
        "for",
        "up",
        "follow",
        "follow-up",
        "followup",
        "intro",
        "reply",
        "response",
        "new",
        "some",
        "them",
        "by",
    ];
    let start = w
        .iter()
        .position(|x| !NOISE.contains(&x.norm.as_str()))
        .unwrap_or(w.len());
    let mut end = start;
    while end < w.len() && !NOISE.contains(&w[end].norm.as_str())
        || (end < w.len()
            && matches!(w[end].norm.as_str(), "at" | "from")
            && end + 1 < w.len()
            && !NOISE.contains(&w[end + 1].norm.as_str()))
    {
        end += 1;
    }
    contact_at(&w[start..end])
}

fn send(w: &[Word]) -> Option<Intent> {
    let (verb_channel, rest) = if let Some(r) = strip_any(w, &["send", "shoot", "fire off"]) {
        (None, r)
    } else if let Some(r) = strip_any(w, &["email", "e-mail"]) {
        (Some("email"), r)
    } else if let Some(r) = strip_any(w, &["message", "dm", "inmail", "reply to", "write back to"])
    {
        (None, r)
    } else if let Some(r) = strip(w, "tell").filter(|r| !starts_with_me(r)) {
        (None, r)
    } else {
        return None;
    };
    let seps = [
        "saying",
        "that says",
        "which says",
        "to say",
        "telling them",
        "telling him",
        "telling her",
        "with the message",
        "that",
    ];
    let (header, body) = match first_pause(rest).filter(|i| *i + 1 < rest.len()) {
        Some(i) if split_first(&rest[..=i], &seps).is_none() => (&rest[..=i], &rest[i + 1..]),
        _ => split_first(rest, &seps)?,
    };
    let (contact, company) = header_contact(header);
    let channel = channel_in(header).or(verb_channel);
    Some(Intent::new(SpokenAction {
        contact: Some(contact?),
        company,
        channel,
        body: Some(free_text(body)?),
        ..SpokenAction::of("send_message")
    }))
}

fn starts_with_me(w: &[Word]) -> bool {
    w.first()
        .is_some_and(|x| matches!(x.norm.as_str(), "me" | "us"))
}

fn draft(w: &[Word]) -> Option<Intent> {
    let verbs = [
        "draft up",
        "draft",
        "write up",
        "write",
        "compose",
        "prepare",
        "create",
        "put together",
    ];
    let rest = strip_any(w, &verbs)?;
    let nouns = [
        "email",
        "e-mail",
        "message",
        "note",
        "follow up",
        "follow-up",
        "followup",
        "intro",
        "reply",
        "response",
        "dm",
        "inmail",
        "linkedin",
    ];
    if !rest
        .iter()
        .any(|x| nouns.contains(&x.norm.as_str()) || x.norm == "follow")
    {
        return None;
    }
    let keep_verb = [
        "asking",
        "thanking",
        "telling",
        "mentioning",
        "inviting",
        "checking",
    ];
    let drop = [
        "about",
        "regarding",
        "re",
        "saying",
        "to say",
        "that says",
        "that",
        "on the topic of",
    ];
    let cut = (1..rest.len()).find(|&i| {
        keep_verb.contains(&rest[i].norm.as_str()) || strip_any(&rest[i..], &drop).is_some()
    });
    let (header, instructions) = match cut {
        Some(i) if keep_verb.contains(&rest[i].norm.as_str()) => {
            (&rest[..i], free_text(&rest[i..]))
        }
        Some(i) => (&rest[..i], strip_any(&rest[i..], &drop).and_then(free_text)),
        None => (rest, None),
    };
    let (contact, company) = header_contact(header);
    Some(Intent::new(SpokenAction {
        contact: Some(contact?),
        company,
        channel: channel_in(header),
        instructions,
        ..SpokenAction::of("draft_message")
    }))
}

fn stats(w: &[Word]) -> Option<Intent> {
    let done = [
        "doing",
        "going",
        "performing",
        "looking",
        "tracking",
        "coming along",
        "doing so far",
        "going so far",
        "performing so far",
    ];
    let heads = ["how is", "how's", "hows", "how are", "how has", "how have"];
    if let Some(rest) = strip_any(w, &heads) {
        let rest = skip_all(rest, &["the"]);
        let body = done.iter().find_map(|d| strip_suffix(rest, d))?;
        let body = strip_suffix(body, "been").unwrap_or(body);
        return campaign_stats(body);
    }
    let leads = [
        "campaign stats for",
        "campaign stats on",
        "stats for",
        "stats on",
        "statistics for",
        "numbers for",
        "numbers on",
        "metrics for",
        "metrics on",
        "performance of",
        "performance for",
        "results for",
        "results of",
        "show me the stats for",
        "show me stats for",
        "show me the numbers for",
        "show me the numbers on",
        "give me the stats for",
        "give me the numbers on",
        "give me the numbers for",
        "what are the stats for",
        "what are the numbers on",
        "what are the numbers for",
        "what are the stats on",
        "get stats for",
        "get me stats for",
        "pull stats for",
        "pull up stats for",
        "pull up the stats for",
    ];
    if let Some(rest) = strip_any(w, &leads) {
        return campaign_stats(rest);
    }
    // "Seed founders stats", "give me the Seed founders numbers"
    let w2 = strip_any(
        w,
        &[
            "give me the",
            "show me the",
            "show me",
            "give me",
            "get me the",
            "the",
        ],
    )
    .unwrap_or(w);
    for tail in [
        "stats",
        "statistics",
        "numbers",
        "metrics",
        "campaign stats",
        "campaign numbers",
    ] {
        if let Some(head) = strip_suffix(w2, tail) {
            if !head.is_empty() && head.len() <= 5 {
                return campaign_stats(head);
            }
        }
    }
    None
}

fn campaign_stats(w: &[Word]) -> Option<Intent> {
    Some(Intent::new(SpokenAction {
        campaign: Some(campaign(w)?),
        ..SpokenAction::of("campaign_stats")
    }))
}

fn inbox(w: &[Word]) -> Option<Intent> {
    let reply_words = [
        "reply",
        "replies",
        "replied",
        "respond",
        "responded",
        "responses",
        "response",
        "write back",
        "wrote back",
        "written back",
        "get back",
        "got back",
        "gotten back",
        "answer",
        "answered",
        "inbox",
    ];
    let mentions = w
        .iter()
        .enumerate()
        .any(|(i, _)| strip_any(&w[i..], &reply_words).is_some());
    if !mentions {
        return None;
    }
    let mut a = SpokenAction::of("reply_inbox");
    // "did John reply", "has Sarah Chen responded"
    if let Some(rest) = strip_any(w, &["did", "has", "have", "had"]) {
        let rest = skip_all(rest, &["we", "i"]);
        if !starts_with_any(
            rest,
            &["anyone", "anybody", "someone", "any", "we", "i", "you"],
        ) {
            let end = (0..rest.len()).find(|&i| strip_any(&rest[i..], &reply_words).is_some())?;
            let (contact, company) = contact_at(&rest[..end]);
            a.contact = Some(contact?);
            a.company = company;
            return Some(Intent::new(a));
        }
    }
    if w.iter()
        .any(|x| matches!(x.norm.as_str(), "new" | "unread" | "unseen"))
    {
        a.unread_only = Some(true);
    }
    // "from John", "by John"
    if let Some((_, who)) = words::split_last(w, &["from", "by"]) {
        let who = skip_all(who, &["the"]);
        let end = (0..who.len())
            .find(|&i| strip_any(&who[i..], &["today", "this", "in", "since"]).is_some())
            .unwrap_or(who.len());
        let (contact, company) = contact_at(&who[..end]);
        a.contact = contact;
        a.company = company;
    }
    // "last 3 replies", "5 most recent replies", "top 3"
    for i in 0..w.len() {
        if let Some(n) =
            number(&w[i]).filter(|n| *n > 0 && !matches!(w[i].norm.as_str(), "a" | "an" | "one"))
        {
            let next = w.get(i + 1).map(|x| x.norm.as_str());
            if matches!(
                next,
                Some("replies" | "responses" | "most" | "latest" | "new" | "unread" | "recent")
            ) {
                a.limit = Some(n);
                break;
            }
        }
    }
    Some(Intent::new(a))
}

fn starts_with_any(w: &[Word], firsts: &[&str]) -> bool {
    w.first().is_some_and(|x| firsts.contains(&x.norm.as_str()))
}

fn signals(w: &[Word]) -> Option<Intent> {
    let about_company = [
        "what's new with",
        "whats new with",
        "what is new with",
        "what's new at",
        "what's happening at",
        "what's happening with",
        "what is happening at",
        "what's going on at",
        "what's going on with",
        "anything new at",
        "anything new with",
        "any news on",
        "any news from",
        "any news about",
    ];
    let mut a = SpokenAction::of("recent_signals");
    let mut intent_since = None;
    let rest = if let Some(rest) = strip_any(w, &about_company) {
        rest
    } else {
        let at = w
            .iter()
            .position(|x| matches!(x.norm.as_str(), "signal" | "signals"))?;
        let head = &w[..at];
        if head
            .iter()
            .any(|x| matches!(x.norm.as_str(), "high" | "strong" | "hot"))
        {
            a.min_intent_score = Some(70);
        }
        if let Some(n) = head.iter().filter_map(number).find(|n| *n > 0) {
            if !head.iter().any(|x| matches!(x.norm.as_str(), "a" | "an")) || n > 1 {
                a.limit = Some(n);
            }
        }
        &w[at + 1..]
    };
    let mut rest = rest;
    if let Some((since, range)) = find_since(rest) {
        intent_since = Some(since);
        // The look-back is at either end of what remains.
        rest = if range.start == 0 {
            &rest[range.end..]
        } else {
            &rest[..range.start]
        };
    }
    // "with intent above 80", "with an intent score over 60"
    if let Some(i) = rest.iter().position(|x| x.norm == "intent") {
        if let Some(n) = rest[i..].iter().rev().find_map(number) {
            a.min_intent_score = Some(i64::from(n.min(100)));
        }
        rest = &rest[..i];
        rest = strip_suffix(rest, "with an")
            .or_else(|| strip_suffix(rest, "with"))
            .unwrap_or(rest);
    }
    let rest = strip_any(
        rest,
        &[
            "for",
            "on",
            "at",
            "from",
            "about",
            "with",
            "in",
            "do we have for",
            "do we have on",
        ],
    )
    .unwrap_or(rest);
    let rest = skip_all(rest, &["do we have", "are there", "the company"]);
    if !rest.is_empty() {
        let (contact, company) = contact_at(rest);
        match company {
            Some(c) => {
                a.contact = contact;
                a.company = Some(c);
            }
            None => a.company = contact,
        }
    }
    let mut intent = Intent::new(a);
    intent.since = intent_since;
    Some(intent)
}

/// A subject that may be a company or a person: a single word or a company-like name is read
/// as a company first, two or more words as a person first; the other reading is the
/// alternative.
fn person_or_company(
    person_kind: &'static str,
    company_kind: &'static str,
    w: &[Word],
    person_field_is_name: bool,
) -> Option<Intent> {
    let w = skip_all(w, &["the"]);
    let as_company = |w: &[Word]| -> Option<SpokenAction> {
        let w = skip_all(w, &["company", "the company", "account"]);
        Some(SpokenAction {
            company: Some(name(w)?),
            ..SpokenAction::of(company_kind)
        })
    };
    let as_person = |w: &[Word]| -> Option<SpokenAction> {
        let (who, company) = contact_at(w);
        let who = who?;
        let mut a = SpokenAction::of(person_kind);
        if person_field_is_name {
            a.person_name = Some(who);
        } else {
            a.contact = Some(who);
        }
        a.company = company;
        Some(a)
    };
    if strip_any(w, &["company", "the company", "account"]).is_some()
        || is_company_like(w)
        || w.first()
            .is_some_and(|x| x.norm.contains('.') && !x.norm.contains('@'))
    {
        return Some(Intent::new(as_company(w)?));
    }
    if w.first().is_some_and(|x| x.norm.contains('@')) {
        return Some(Intent::new(as_person(w)?));
    }
    let has_company_part = words::split_last(w, &["at", "from"]).is_some();
    if w.len() == 1 {
        let mut i = Intent::new(as_company(w)?);
        i.alternative = as_person(w);
        return Some(i);
    }
    let mut i = Intent::new(as_person(w)?);
    if !has_company_part {
        i.alternative = as_company(w);
    }
    Some(i)
}

fn research(w: &[Word]) -> Option<Intent> {
    let verbs = [
        "do some research on",
        "do research on",
        "run research on",
        "start research on",
        "start researching",
        "kick off research on",
        "research",
        "look into",
        "dig into",
        "investigate",
        "find out more about",
        "dig up info on",
    ];
    let rest = strip_any(w, &verbs)?;
    // "research Notion's hiring plans": the owner is the subject, the rest the topic.
    if let Some(i) = rest[..rest.len().saturating_sub(1)]
        .iter()
        .position(|x| x.norm.ends_with("'s"))
    {
        let mut intent = person_or_company("start_research", "start_research", &rest[..=i], false)?;
        let topic = free_text(&rest[i + 1..]);
        intent.action.topic = topic.clone();
        if let Some(alt) = &mut intent.alternative {
            alt.topic = topic;
        }
        return Some(intent);
    }
    let (subject, topic) = match split_first(
        rest,
        &[
            "about",
            "regarding",
            "on",
            "focusing on",
            "focused on",
            "for",
        ],
    ) {
        Some((s, t)) if !t.is_empty() => (s, free_text(t)),
        _ => (rest, None),
    };
    let mut i = person_or_company("start_research", "start_research", subject, false)?;
    i.action.topic = topic.clone();
    if let Some(alt) = &mut i.alternative {
        alt.topic = topic;
    }
    Some(i)
}

fn enrich(w: &[Word]) -> Option<Intent> {
    if let Some(rest) = strip_any(w, &["enrich the contact", "enrich contact", "enrich"]) {
        let rest = strip_suffix(rest, "'s profile").unwrap_or(rest);
        let rest = strip_any_suffix(
            rest,
            &["profile", "data", "info", "record", "details", "contact"],
        );
        return about_contact("enrich_contact", rest).map(Intent::new);
    }
    let verbs = [
        "update", "refresh", "fill in", "complete", "find", "get", "look up",
    ];
    let rest = strip_any(w, &verbs)?;
    let what = [
        "info",
        "information",
        "details",
        "data",
        "profile",
        "record",
        "email",
        "email address",
        "contact info",
        "contact details",
        "phone number",
    ];
    let head = what.iter().find_map(|t| strip_suffix(rest, t))?;
    let last = head.last()?;
    if !last.norm.ends_with("'s") {
        return None;
    }
    about_contact("enrich_contact", head).map(Intent::new)
}

fn strip_any_suffix<'a>(w: &'a [Word], tails: &[&str]) -> &'a [Word] {
    tails
        .iter()
        .find_map(|t| strip_suffix(w, t).filter(|h| !h.is_empty()))
        .unwrap_or(w)
}

fn lookup(w: &[Word]) -> Option<Intent> {
    if let Some(rest) = strip_any(w, &["tell me who", "do you know who", "remind me who"]) {
        let rest = strip_suffix(rest, "is").unwrap_or(rest);
        let mut a = about_contact("lookup_person", rest)?;
        a.person_name = a.contact.take();
        return Some(Intent::new(a));
    }
    if let Some(rest) = strip_any(w, &["who is", "who's", "whos", "who are", "who was"]) {
        let mut a = about_contact("lookup_person", rest)?;
        a.person_name = a.contact.take();
        return Some(Intent::new(a));
    }
    let company_leads = [
        "look up the company",
        "lookup the company",
        "look up company",
        "lookup company",
        "company info for",
        "company info on",
        "company lookup",
        "what does",
        "tell me about the company",
    ];
    if let Some(rest) = strip_any(w, &company_leads) {
        let rest = strip_suffix(rest, "do").unwrap_or(rest);
        return Some(Intent::new(SpokenAction {
            company: Some(name(rest)?),
            ..SpokenAction::of("lookup_company")
        }));
    }
    let leads = [
        "tell me about",
        "tell me more about",
        "what do we know about",
        "what do you know about",
        "what do we have on",
        "what have we got on",
        "look up",
        "lookup",
        "pull up",
        "bring up",
        "search for",
        "find",
        "info on",
        "information on",
        "details on",
        "details for",
        "get me",
        "show me",
        "give me the rundown on",
        "brief me on",
        "rundown on",
    ];
    let rest = strip_any(w, &leads)?;
    let rest = strip_suffix(rest, "'s details")
        .or_else(|| strip_suffix(rest, "'s profile"))
        .unwrap_or(rest);
    if rest.is_empty() {
        return None;
    }
    person_or_company("lookup_person", "lookup_company", rest, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn act(text: &str) -> Value {
        match understand(text) {
            Understanding::Action(i) => {
                let clock = Clock::new(
                    chrono::DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
                        .unwrap()
                        .with_timezone(&chrono::Utc),
                    chrono_tz::UTC,
                );
                i.resolve(&clock).0.to_json()
            }
            other => panic!("'{text}': {other:?}"),
        }
    }

    #[test]
    fn yes_and_no() {
        for t in [
            "yes",
            "Yes, do it.",
            "confirm",
            "yeah go ahead",
            "ok",
            "sure",
            "yes please",
        ] {
            assert_eq!(understand(t), Understanding::Confirm(true), "{t}");
        }
        for t in [
            "no",
            "cancel",
            "No, cancel that.",
            "never mind",
            "don't do it",
            "nope",
        ] {
            assert_eq!(understand(t), Understanding::Confirm(false), "{t}");
        }
        assert_eq!(confirmation_of("add john to seed founders"), None);
    }

    #[test]
    fn nothing_recognised() {
        for t in [
            "",
            "um",
            "what's the weather like",
            "play some music",
            "hello there",
        ] {
            assert_eq!(understand(t), Understanding::Unrecognized, "{t}");
        }
    }

    #[test]
    fn everyday_phrasings() {
        let table = [
            (
                "Who is Sarah Chen at Notion?",
                json!({"type":"lookup_person","personName":"Sarah Chen","company":"Notion"}),
            ),
            (
                "tell me about Acme",
                json!({"type":"lookup_company","company":"Acme"}),
            ),
            (
                "add john smith to seed founders",
                json!({"type":"add_to_campaign","contactRef":"john smith","campaignRef":"seed founders"}),
            ),
            (
                "put Sarah Kim in the Q4 Enterprise campaign",
                json!({"type":"add_to_campaign","contactRef":"Sarah Kim","campaignRef":"Q4 Enterprise"}),
            ),
            (
                "take John off Seed founders",
                json!({"type":"remove_from_campaign","contactRef":"John","campaignRef":"Seed founders"}),
            ),
            (
                "pause Q4 Enterprise",
                json!({"type":"pause_campaign","campaignRef":"Q4 Enterprise"}),
            ),
            (
                "unpause seed founders",
                json!({"type":"resume_campaign","campaignRef":"seed founders"}),
            ),
            (
                "book a 45 minute meeting with John Smith tomorrow at 3pm",
                json!({"type":"book_meeting","contactRef":"John Smith","startTime":"2026-11-27T15:00:00Z","durationMinutes":45}),
            ),
            (
                "mark Sarah Chen as not interested",
                json!({"type":"mark_status","contactRef":"Sarah Chen","status":"not_interested"}),
            ),
            (
                "note on John Smith: wants pricing by Friday",
                json!({"type":"note_on_contact","contactRef":"John Smith","note":"wants pricing by Friday"}),
            ),
            ("scratch that", json!({"type":"undo_last"})),
            ("any replies?", json!({"type":"reply_inbox"})),
            (
                "did John Smith reply",
                json!({"type":"reply_inbox","contactRef":"John Smith"}),
            ),
            (
                "how is Seed founders doing",
                json!({"type":"campaign_stats","campaignRef":"Seed founders"}),
            ),
            (
                "send John an email saying see you Friday",
                json!({"type":"send_message","contactRef":"John","channel":"email","body":"see you Friday"}),
            ),
            (
                "draft a linkedin message to Sarah Chen about the webinar",
                json!({"type":"draft_message","contactRef":"Sarah Chen","channel":"linkedin","instructions":"the webinar"}),
            ),
            (
                "research Figma",
                json!({"type":"start_research","company":"Figma"}),
            ),
            (
                "enrich John Smith",
                json!({"type":"enrich_contact","contactRef":"John Smith"}),
            ),
        ];
        for (text, want) in table {
            assert_eq!(act(text), want, "{text}");
        }
    }

    #[test]
    fn ambiguous_subjects_carry_the_other_reading() {
        let Understanding::Action(i) = understand("tell me about john smith") else {
            panic!()
        };
        assert_eq!(i.action.kind, "lookup_person");
        assert_eq!(
            i.alternative.as_ref().map(|a| a.kind),
            Some("lookup_company")
        );
        let Understanding::Action(i) = understand("research acme") else {
            panic!()
        };
        assert_eq!(i.action.company.as_deref(), Some("acme"));
        assert_eq!(
            i.alternative.and_then(|a| a.contact).as_deref(),
            Some("acme")
        );
    }

    mod hostile {
        use super::super::*;
        use proptest::prelude::*;

        /// Words the rules look for, so random sentences reach deep into every rule.
        const VOCAB: &[&str] = &[
            "add",
            "to",
            "in",
            "from",
            "off",
            "at",
            "on",
            "the",
            "a",
            "with",
            "book",
            "call",
            "meeting",
            "tomorrow",
            "next",
            "tuesday",
            "3pm",
            "3",
            "p",
            "m",
            "45",
            "minute",
            "half",
            "hour",
            "note",
            "that",
            "saying",
            "mark",
            "as",
            "not",
            "interested",
            "who",
            "is",
            "tell",
            "me",
            "about",
            "research",
            "enrich",
            "pause",
            "resume",
            "draft",
            "email",
            "send",
            "linkedin",
            "how",
            "doing",
            "any",
            "replies",
            "did",
            "reply",
            "signals",
            "since",
            "last",
            "days",
            "undo",
            "yes",
            "no",
            ":",
            ",",
            "-",
            "um",
            "john@acme.com",
            "dot",
            "com",
            "december",
            "3rd",
            "of",
            "for",
            "'s",
            "status",
        ];

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

            /// Whatever the words, the parser answers (and any action it reads resolves in
            /// any zone) without panicking.
            #[test]
            fn never_panics(
                picks in proptest::collection::vec(0..VOCAB.len(), 0..24),
                noise in "\\PC{0,40}",
            ) {
                let mut text: Vec<&str> = picks.iter().map(|i| VOCAB[*i]).collect();
                text.push(&noise);
                let text = text.join(" ");
                if let Understanding::Action(i) = understand(&text) {
                    let clock = Clock::new(chrono::Utc::now(), chrono_tz::Pacific::Chatham);
                    let (a, alt) = i.resolve(&clock);
                    prop_assert!(!a.kind.is_empty());
                    if let Some(alt) = alt {
                        prop_assert!(!alt.kind.is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn dates_need_the_clock_only_when_spoken() {
        let Understanding::Action(i) = understand("book a call with john tomorrow at 3") else {
            panic!()
        };
        assert!(i.needs_clock());
        let Understanding::Action(i) = understand("who is john") else {
            panic!()
        };
        assert!(!i.needs_clock());
    }
}

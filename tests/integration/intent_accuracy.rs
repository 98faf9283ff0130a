//! Scores the built-in intent parser on the labelled utterances in `tests/data/intents.jsonl`
//! (paraphrases, lower case, missing punctuation, "um", spelt-out addresses): the action type
//! and every field must match exactly, dates read against a fixed "now" (Thursday
//! 2026-11-26 10:00 UTC) in the line's time zone (UTC unless it says otherwise).

use pilot_bridge::intent::{understand, Clock, Understanding};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Labelled {
    text: String,
    /// The action object, `"yes"` / `"no"` for a confirmation, or null for nothing recognised.
    expect: Value,
    zone: Option<String>,
}

fn outcome(line: &Labelled) -> Value {
    let zone: chrono_tz::Tz = line
        .zone
        .as_deref()
        .unwrap_or("UTC")
        .parse()
        .expect("a known time zone in the data");
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
        .expect("fixed now")
        .with_timezone(&chrono::Utc);
    match understand(&line.text) {
        Understanding::Action(intent) => intent.resolve(&Clock::new(now, zone)).0.to_json(),
        Understanding::Confirm(true) => Value::String("yes".into()),
        Understanding::Confirm(false) => Value::String("no".into()),
        Understanding::Unrecognized => Value::Null,
    }
}

#[test]
fn labelled_utterances_are_understood() {
    let data = include_str!("../data/intents.jsonl");
    let lines: Vec<Labelled> = data
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect();
    assert!(
        lines.len() >= 150,
        "only {} labelled utterances",
        lines.len()
    );
    let mut wrong = Vec::new();
    for line in &lines {
        let got = outcome(line);
        if got != line.expect {
            wrong.push(format!(
                "  {:?}\n    want {}\n    got  {}",
                line.text, line.expect, got
            ));
        }
    }
    let right = lines.len() - wrong.len();
    let accuracy = right as f64 / lines.len() as f64;
    println!(
        "intent accuracy: {right}/{} = {:.1}%",
        lines.len(),
        accuracy * 100.0
    );
    for w in &wrong {
        println!("{w}");
    }
    assert!(
        accuracy >= 0.95,
        "accuracy {:.1}% is under 95%:\n{}",
        accuracy * 100.0,
        wrong.join("\n")
    );
}

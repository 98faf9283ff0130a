//! Spoken dates and times ("tomorrow at 3pm", "next Tuesday at 10am", "December 3rd at noon",
//! "in the last 3 days"), read as words first and placed on the calendar later, in the org's
//! time zone, against an injected "now".
//!
//! A small grammar rather than a crate: the phrasings a voice turn uses are few, and each one
//! has a test here. Conventions: a bare or "next"/"this" weekday is the first such day after
//! today; an hour without am/pm from 1 to 7 is afternoon; a date already past this year is
//! next year's; a time already past today, with no day given, is tomorrow's.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone as _, Utc, Weekday};

use super::words::{number, Word};

/// "Now" and where the org is: what relative dates are read against.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: DateTime<Utc>,
    pub zone: chrono_tz::Tz,
}

impl Clock {
    pub fn new(now: DateTime<Utc>, zone: chrono_tz::Tz) -> Self {
        Clock { now, zone }
    }

    fn today(&self) -> NaiveDate {
        self.now.with_timezone(&self.zone).date_naive()
    }
}

/// A day as spoken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Day {
    Today,
    Tomorrow,
    AfterTomorrow,
    Weekday(Weekday),
    Date { month: u32, day: u32 },
    InDays(u32),
}

/// A start time as spoken: a day, a clock time, or both.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct When {
    pub day: Option<Day>,
    /// Hour (0–23) and minute.
    pub time: Option<(u32, u32)>,
}

/// How far back to look, as spoken ("today", "this week", "the last 3 days", "since Monday").
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Since {
    Today,
    Yesterday,
    ThisWeek,
    ThisMonth,
    DaysAgo(u32),
    LastWeekday(Weekday),
}

fn weekday(s: &str) -> Option<Weekday> {
    Some(match s {
        "monday" | "mon" => Weekday::Mon,
        "tuesday" | "tue" | "tues" => Weekday::Tue,
        "wednesday" | "wed" => Weekday::Wed,
        "thursday" | "thu" | "thurs" => Weekday::Thu,
        "friday" | "fri" => Weekday::Fri,
        "saturday" | "sat" => Weekday::Sat,
        "sunday" | "sun" => Weekday::Sun,
        _ => return None,
    })
}

fn month(s: &str) -> Option<u32> {
    const MONTHS: &[(&str, &str)] = &[
        ("january", "jan"),
        ("february", "feb"),
        ("march", "mar"),
        ("april", "apr"),
        ("may", "may"),
        ("june", "jun"),
        ("july", "jul"),
        ("august", "aug"),
        ("september", "sep"),
        ("october", "oct"),
        ("november", "nov"),
        ("december", "dec"),
    ];
    MONTHS
        .iter()
        .position(|(long, short)| s == *long || s == *short || (s == "sept" && *short == "sep"))
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// "3", "3rd", "twenty first" is out of scope: digits with or without an ordinal suffix.
fn day_of_month(s: &str) -> Option<u32> {
    let digits = s
        .strip_suffix("st")
        .or_else(|| s.strip_suffix("nd"))
        .or_else(|| s.strip_suffix("rd"))
        .or_else(|| s.strip_suffix("th"))
        .unwrap_or(s);
    let ordinal_words = [
        "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
        "tenth",
    ];
    if let Some(i) = ordinal_words.iter().position(|w| *w == s) {
        return u32::try_from(i + 1).ok();
    }
    digits.parse::<u32>().ok().filter(|d| (1..=31).contains(d))
}

/// A clock time in one word: "3", "3pm", "3:30", "3:30pm", "15:00", "noon".
fn clock_word(s: &str) -> Option<(u32, u32, Option<bool>)> {
    let (body, pm) = if let Some(b) = s.strip_suffix("pm").or_else(|| s.strip_suffix("p.m")) {
        (b, Some(true))
    } else if let Some(b) = s.strip_suffix("am").or_else(|| s.strip_suffix("a.m")) {
        (b, Some(false))
    } else {
        (s, None)
    };
    let body = body.trim_end_matches('.');
    let (h, m) = match body.split_once(':') {
        Some((h, m)) => (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?),
        None => (body.parse::<u32>().ok()?, 0),
    };
    (h <= 23 && m <= 59 && !(pm.is_some() && (h == 0 || h > 12))).then_some((h, m, pm))
}

fn hour_word(w: &Word) -> Option<u32> {
    number(w).filter(|n| (1..=12).contains(n) && w.norm != "a" && w.norm != "an")
}

fn with_meridiem(h: u32, m: u32, pm: Option<bool>) -> (u32, u32) {
    match pm {
        Some(true) if h < 12 => (h + 12, m),
        Some(false) if h == 12 => (0, m),
        Some(_) => (h, m),
        // Nobody books a 3 am call: 1–7 without am/pm is afternoon.
        None if (1..=7).contains(&h) => (h + 12, m),
        None => (h, m),
    }
}

const LEAD_INS: &[&str] = &["next", "this", "coming", "on", "at", "by", "around", "for"];

/// True when a word that starts a time follows, after at most two more lead-ins ("on next
/// Tuesday"). Checked without recursion, so a run of lead-in words costs nothing.
fn leads_to_time(words: &[Word]) -> bool {
    let mut rest = words;
    for _ in 0..3 {
        let Some(first) = rest.first() else {
            return false;
        };
        if LEAD_INS.contains(&first.norm.as_str()) {
            rest = &rest[1..];
            continue;
        }
        return time_word(rest);
    }
    false
}

/// True when `words[0]` (with the word after it, for dates) can begin a time.
fn time_word(words: &[Word]) -> bool {
    let Some(w) = words.first() else {
        return false;
    };
    let s = w.norm.as_str();
    let next = words.get(1).map(|n| n.norm.as_str());
    matches!(
        s,
        "today" | "tonight" | "tomorrow" | "noon" | "midday" | "morning" | "afternoon" | "evening"
    ) || weekday(s).is_some()
        || (month(s).is_some() && next.and_then(day_of_month).is_some())
        || (s == "the" && next.is_some_and(|n| n == "day" || day_of_month(n).is_some()))
        || clock_word(s).is_some()
        || hour_word(w).is_some()
}

/// True when a time phrase starts at `words[0]`.
pub fn starts_when(words: &[Word]) -> bool {
    parse_when(words).1 > 0
}

/// Reads a start time from the front of `words`; returns it and how many words it took (0:
/// none there).
pub fn parse_when(words: &[Word]) -> (When, usize) {
    let mut when = When::default();
    let mut i = 0;
    let mut took = 0;
    let mut day_part: Option<(u32, u32)> = None;
    while i < words.len() {
        let w = words[i].norm.as_str();
        let next = words.get(i + 1).map(|w| w.norm.as_str());
        let mut step = 0;
        match w {
            "today" if when.day.is_none() => {
                when.day = Some(Day::Today);
                step = 1;
            }
            "tonight" if when.day.is_none() => {
                when.day = Some(Day::Today);
                day_part = Some((19, 0));
                step = 1;
            }
            "tomorrow" if when.day.is_none() => {
                when.day = Some(Day::Tomorrow);
                step = 1;
            }
            "day"
                if when.day.is_none()
                    && next == Some("after")
                    && words.get(i + 2).map(|w| w.norm.as_str()) == Some("tomorrow") =>
            {
                when.day = Some(Day::AfterTomorrow);
                step = 3;
            }
            "the"
                if when.day.is_none()
                    && ((next == Some("day")
                        && words.get(i + 2).map(|w| w.norm.as_str()) == Some("after"))
                        || (next.and_then(day_of_month).is_some()
                            && words.get(i + 2).map(|w| w.norm.as_str()) == Some("of"))) =>
            {
                step = 1;
            }
            "next" | "this" | "coming" | "on" | "at" | "by" | "around" | "for"
                if i + 1 < words.len() =>
            {
                // Only a lead-in when what follows is part of the time.
                if leads_to_time(&words[i + 1..]) {
                    step = 1;
                }
            }
            "in" if when.day.is_none() => {
                // "in 3 days", "in a week"
                if let (Some(n), Some(unit)) = (
                    words.get(i + 1).and_then(number),
                    words.get(i + 2).map(|w| w.norm.as_str()),
                ) {
                    match unit {
                        "day" | "days" => {
                            when.day = Some(Day::InDays(n));
                            step = 3;
                        }
                        "week" | "weeks" => {
                            when.day = Some(Day::InDays(n * 7));
                            step = 3;
                        }
                        _ => {}
                    }
                }
                if step == 0 && next == Some("the") {
                    // "in the morning"
                    if let Some(p) = words.get(i + 2).and_then(|w| part_of_day(&w.norm)) {
                        day_part = Some(p);
                        step = 3;
                    }
                }
            }
            "noon" | "midday" if when.time.is_none() => {
                when.time = Some((12, 0));
                step = 1;
            }
            "morning" | "afternoon" | "evening" if day_part.is_none() => {
                day_part = part_of_day(w);
                step = 1;
            }
            "o'clock" | "oclock" if took > 0 => step = 1,
            _ => {
                if when.day.is_none() {
                    if let Some(d) = weekday(w) {
                        when.day = Some(Day::Weekday(d));
                        step = 1;
                    } else if let Some(m) = month(w) {
                        // "december 3rd", "dec 3"
                        if let Some(d) = next.and_then(day_of_month) {
                            when.day = Some(Day::Date { month: m, day: d });
                            step = 2;
                        }
                    } else if let Some(d) =
                        day_of_month(w).filter(|_| !w.ends_with(char::is_numeric))
                    {
                        // "3rd of december", "the third of december"
                        if next == Some("of") {
                            if let Some(m) = words.get(i + 2).and_then(|w| month(&w.norm)) {
                                when.day = Some(Day::Date { month: m, day: d });
                                step = 3;
                            }
                        }
                    }
                }
                if step == 0 && when.time.is_none() {
                    step = clock_at(&words[i..], &mut when);
                }
            }
        }
        if step == 0 {
            break;
        }
        i += step;
        took = i;
    }
    if when.time.is_none() {
        when.time = day_part;
    }
    if when.day.is_none() && when.time.is_none() {
        return (when, 0);
    }
    (when, took)
}

fn part_of_day(w: &str) -> Option<(u32, u32)> {
    match w {
        "morning" => Some((9, 0)),
        "afternoon" => Some((14, 0)),
        "evening" => Some((18, 0)),
        _ => None,
    }
}

/// "pm", "p.m." (one word after punctuation is trimmed) or "p m": afternoon or morning, and
/// how many words that took.
fn meridiem(words: &[Word]) -> Option<(bool, usize)> {
    let w = |k: usize| words.get(k).map(|w| w.norm.as_str());
    match (w(0), w(1)) {
        (Some("pm" | "p.m"), _) => Some((true, 1)),
        (Some("am" | "a.m"), _) => Some((false, 1)),
        (Some("p"), Some("m")) => Some((true, 2)),
        (Some("a"), Some("m")) => Some((false, 2)),
        _ => None,
    }
}

/// A clock time at the front of `words` ("3pm", "3 pm", "3 p.m.", "3:30", "three thirty pm",
/// "10 am"); returns how many words it took.
fn clock_at(words: &[Word], when: &mut When) -> usize {
    let Some(first) = words.first() else {
        return 0;
    };
    if let Some((h, m, pm)) = clock_word(&first.norm) {
        if pm.is_none() {
            if let Some((pm, n)) = meridiem(&words[1..]) {
                if h == 0 || h > 12 {
                    return 0;
                }
                when.time = Some(with_meridiem(h, m, Some(pm)));
                return 1 + n;
            }
        }
        when.time = Some(with_meridiem(h, m, pm));
        return 1;
    }
    if let Some(h) = hour_word(first) {
        // "three", "three thirty", "three pm"
        let mut n = 1;
        let mut m = 0;
        if let Some(mins) = words
            .get(1)
            .and_then(number)
            .filter(|m| (10..=59).contains(m))
        {
            m = mins;
            n += 1;
        }
        let pm = meridiem(&words[n..]).map(|(pm, k)| {
            n += k;
            pm
        });
        when.time = Some(with_meridiem(h, m, pm));
        return n;
    }
    0
}

impl When {
    /// The moment this names in the clock's zone, as UTC; `None` without a clock time (a day
    /// alone is not a meeting start) or for a date that does not exist.
    pub fn resolve(&self, clock: &Clock) -> Option<DateTime<Utc>> {
        let (h, m) = self.time?;
        let today = clock.today();
        let time = NaiveTime::from_hms_opt(h, m, 0)?;
        let date = match self.day {
            None => {
                let local_now = clock.now.with_timezone(&clock.zone).naive_local();
                if today.and_time(time) > local_now {
                    today
                } else {
                    today.succ_opt()?
                }
            }
            Some(day) => day_date(day, today)?,
        };
        local_to_utc(clock, date.and_time(time))
    }
}

fn day_date(day: Day, today: NaiveDate) -> Option<NaiveDate> {
    Some(match day {
        Day::Today => today,
        Day::Tomorrow => today + Duration::days(1),
        Day::AfterTomorrow => today + Duration::days(2),
        Day::InDays(n) => today + Duration::days(i64::from(n.min(3660))),
        Day::Weekday(w) => {
            let ahead = (i64::from(w.num_days_from_monday())
                - i64::from(today.weekday().num_days_from_monday()))
            .rem_euclid(7);
            today + Duration::days(if ahead == 0 { 7 } else { ahead })
        }
        Day::Date { month, day } => {
            let this_year = NaiveDate::from_ymd_opt(today.year(), month, day);
            match this_year {
                Some(d) if d >= today => d,
                _ => NaiveDate::from_ymd_opt(today.year() + 1, month, day)?,
            }
        }
    })
}

fn local_to_utc(clock: &Clock, local: chrono::NaiveDateTime) -> Option<DateTime<Utc>> {
    clock
        .zone
        .from_local_datetime(&local)
        .earliest()
        // A time skipped by a DST change: the hour after it.
        .or_else(|| {
            clock
                .zone
                .from_local_datetime(&(local + Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

/// `t` as RFC 3339 in the clock's zone, to the second ("2026-11-27T15:00:00-05:00").
pub fn rfc3339_local(t: DateTime<Utc>, clock: &Clock) -> String {
    t.with_timezone(&clock.zone)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Since {
    /// The first day to include, in the clock's zone (`since` takes a date from local midnight).
    pub fn resolve(&self, clock: &Clock) -> NaiveDate {
        let today = clock.today();
        match *self {
            Since::Today => today,
            Since::Yesterday => today - Duration::days(1),
            Since::ThisWeek => {
                today - Duration::days(i64::from(today.weekday().num_days_from_monday()))
            }
            Since::ThisMonth => today.with_day(1).unwrap_or(today),
            Since::DaysAgo(n) => today - Duration::days(i64::from(n.min(3660))),
            Since::LastWeekday(w) => {
                let back = (i64::from(today.weekday().num_days_from_monday())
                    - i64::from(w.num_days_from_monday()))
                .rem_euclid(7);
                today - Duration::days(back)
            }
        }
    }
}

/// Reads a look-back from anywhere in `words`; returns it and the range of words it took.
pub fn find_since(words: &[Word]) -> Option<(Since, std::ops::Range<usize>)> {
    for i in 0..words.len() {
        let at = |k: usize| words.get(i + k).map(|w| w.norm.as_str());
        let found = match (at(0), at(1), at(2), at(3)) {
            (Some("today"), ..) => Some((Since::Today, 1)),
            (Some("yesterday"), ..) => Some((Since::Yesterday, 1)),
            (Some("since"), Some("yesterday"), ..) => Some((Since::Yesterday, 2)),
            (Some("this" | "the"), Some("week"), ..) => Some((Since::ThisWeek, 2)),
            (Some("this" | "the"), Some("month"), ..) => Some((Since::ThisMonth, 2)),
            (Some("last" | "past"), Some("week"), ..) => Some((Since::DaysAgo(7), 2)),
            (Some("last" | "past"), Some("month"), ..) => Some((Since::DaysAgo(30), 2)),
            (Some("the"), Some("last" | "past"), Some("week"), _) => Some((Since::DaysAgo(7), 3)),
            (Some("since"), Some(d), ..) if weekday(d).is_some() => {
                weekday(d).map(|w| (Since::LastWeekday(w), 2))
            }
            (Some("the"), Some("last" | "past"), Some(_), Some("days" | "day")) => words
                .get(i + 2)
                .and_then(number)
                .map(|n| (Since::DaysAgo(n), 4)),
            (Some("last" | "past"), Some(_), Some("days" | "day"), _) => words
                .get(i + 1)
                .and_then(number)
                .map(|n| (Since::DaysAgo(n), 3)),
            _ => None,
        };
        if let Some((since, n)) = found {
            // "in the last 3 days", "from this week", "over the past week"
            let start = if i > 0
                && ["in", "from", "over", "during", "for"].contains(&words[i - 1].norm.as_str())
            {
                i - 1
            } else {
                i
            };
            return Some((since, start..i + n));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::words::split;

    /// Thursday 26 November 2026, 10:00 UTC (05:00 in New York).
    fn clock(zone: chrono_tz::Tz) -> Clock {
        Clock::new(
            DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            zone,
        )
    }

    fn at(text: &str, zone: chrono_tz::Tz) -> Option<String> {
        let w = split(text);
        let (when, took) = parse_when(&w);
        assert_eq!(took, w.len(), "all of '{text}' is a time");
        let c = clock(zone);
        when.resolve(&c).map(|t| rfc3339_local(t, &c))
    }

    #[test]
    fn days_and_times_in_utc() {
        let utc = chrono_tz::UTC;
        let table = [
            ("tomorrow at 3pm", "2026-11-27T15:00:00Z"),
            ("tomorrow at 3 pm", "2026-11-27T15:00:00Z"),
            ("tomorrow at 3 p.m.", "2026-11-27T15:00:00Z"),
            ("at 3pm tomorrow", "2026-11-27T15:00:00Z"),
            ("tomorrow at 3", "2026-11-27T15:00:00Z"),
            ("tomorrow at three", "2026-11-27T15:00:00Z"),
            ("tomorrow at 9", "2026-11-27T09:00:00Z"),
            ("tomorrow at 10:30am", "2026-11-27T10:30:00Z"),
            ("tomorrow at 15:00", "2026-11-27T15:00:00Z"),
            ("tomorrow at noon", "2026-11-27T12:00:00Z"),
            ("tomorrow morning", "2026-11-27T09:00:00Z"),
            ("next tuesday at 10am", "2026-12-01T10:00:00Z"),
            ("on tuesday at 10 am", "2026-12-01T10:00:00Z"),
            ("thursday at 2pm", "2026-12-03T14:00:00Z"),
            ("friday afternoon", "2026-11-27T14:00:00Z"),
            ("december 3rd at noon", "2026-12-03T12:00:00Z"),
            ("on dec 3 at 4pm", "2026-12-03T16:00:00Z"),
            ("the 3rd of december at 9am", "2026-12-03T09:00:00Z"),
            ("january 5 at 11am", "2027-01-05T11:00:00Z"),
            ("in 3 days at 2pm", "2026-11-29T14:00:00Z"),
            ("the day after tomorrow at 1pm", "2026-11-28T13:00:00Z"),
            ("today at 4pm", "2026-11-26T16:00:00Z"),
            ("at 4pm", "2026-11-26T16:00:00Z"),
            // 9 am has passed at 10:00: the next 9 am.
            ("at 9am", "2026-11-27T09:00:00Z"),
        ];
        for (text, want) in table {
            assert_eq!(at(text, utc).as_deref(), Some(want), "{text}");
        }
    }

    #[test]
    fn times_are_read_in_the_org_zone() {
        let ny = chrono_tz::America::New_York;
        assert_eq!(
            at("tomorrow at 3pm", ny).as_deref(),
            Some("2026-11-27T15:00:00-05:00")
        );
        // 05:00 in New York: 9 am today is still ahead.
        assert_eq!(
            at("at 9am", ny).as_deref(),
            Some("2026-11-26T09:00:00-05:00")
        );
        let tokyo = chrono_tz::Asia::Tokyo;
        // 19:00 on Thursday in Tokyo: "tomorrow" is Friday there.
        assert_eq!(
            at("tomorrow at 10am", tokyo).as_deref(),
            Some("2026-11-27T10:00:00+09:00")
        );
    }

    #[test]
    fn a_day_alone_has_no_start() {
        assert_eq!(at("tomorrow", chrono_tz::UTC), None);
        assert_eq!(at("next tuesday", chrono_tz::UTC), None);
        let w = split("with john");
        assert_eq!(parse_when(&w).1, 0);
        // A lead-in word alone is not a time.
        assert_eq!(parse_when(&split("at acme")).1, 0);
        assert_eq!(parse_when(&split("on pricing")).1, 0);
    }

    #[test]
    fn dst_gaps_move_forward() {
        // 2027-03-14 02:30 does not exist in New York.
        let c = Clock::new(
            DateTime::parse_from_rfc3339("2027-03-13T12:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            chrono_tz::America::New_York,
        );
        let w = split("tomorrow at 2:30am");
        let t = parse_when(&w).0.resolve(&c).unwrap();
        assert_eq!(rfc3339_local(t, &c), "2027-03-14T03:30:00-04:00");
    }

    #[test]
    fn runs_of_lead_in_words_are_cheap_and_not_a_time() {
        let many = "at ".repeat(3_000) + "acme";
        let w = split(&many);
        assert_eq!(parse_when(&w).1, 0);
        let w = split(&("at ".repeat(3_000) + "3pm"));
        // The lead-ins before the last two are not part of the time.
        assert_eq!(parse_when(&w[2_997..]).1, 4);
    }

    #[test]
    fn look_backs() {
        let c = clock(chrono_tz::UTC);
        let table = [
            ("today", "2026-11-26"),
            ("yesterday", "2026-11-25"),
            ("this week", "2026-11-23"),
            ("this month", "2026-11-01"),
            ("in the last 3 days", "2026-11-23"),
            ("past week", "2026-11-19"),
            ("since monday", "2026-11-23"),
            ("since thursday", "2026-11-26"),
        ];
        for (text, want) in table {
            let w = split(text);
            let (since, range) = find_since(&w).unwrap();
            assert_eq!(range, 0..w.len(), "{text}");
            assert_eq!(since.resolve(&c).to_string(), want, "{text}");
        }
        assert!(find_since(&split("any signals for acme")).is_none());
    }
}

//! The demo workspace (DESIGN §13): org `demo` with the named records the docs and tests rely on,
//! plus about 200 generated contacts. Seeding is deterministic and runs only when org `demo`
//! does not exist yet, so restarting `serve --demo` never touches existing data.

use chrono::{Duration, Utc};
use rusqlite::Connection;
use serde_json::json;

use crate::domain::{CampaignStatus, ContactStatus, PilotMode, Plan, Scope};
use crate::error::ApiResult;
use crate::ids::to_rfc3339;
use crate::input::Patch;
use crate::store::campaigns::{self, NewCampaign};
use crate::store::companies::{self, CompanyFields};
use crate::store::contacts::{self, ContactFields};
use crate::store::interactions::{self, NewInteraction};
use crate::store::signals::{self, NewSignal};
use crate::store::{keys, orgs};

pub const DEMO_ORG: &str = "demo";
/// How many contacts are generated besides the named ones.
pub const GENERATED_CONTACTS: usize = 200;

struct Person {
    first: &'static str,
    last: &'static str,
    email: &'static str,
    company: &'static str,
    title: &'static str,
    status: ContactStatus,
}

const NAMED: &[Person] = &[
    Person {
        first: "Sarah",
        last: "Chen",
        email: "sarah.chen@notion.so",
        company: "Notion",
        title: "VP of Engineering",
        status: ContactStatus::Qualified,
    },
    Person {
        first: "John",
        last: "Smith",
        email: "john@acme.com",
        company: "Acme",
        title: "Head of Operations",
        status: ContactStatus::New,
    },
    Person {
        first: "Sarah",
        last: "Kim",
        email: "sarah.kim@figma.com",
        company: "Figma",
        title: "Design Director",
        status: ContactStatus::Contacted,
    },
    Person {
        first: "Priya",
        last: "Raman",
        email: "priya@notion.so",
        company: "Notion",
        title: "Head of Sales",
        status: ContactStatus::Interested,
    },
    Person {
        first: "Marcus",
        last: "Oyelaran",
        email: "marcus@acme.com",
        company: "Acme",
        title: "CTO",
        status: ContactStatus::Replied,
    },
    Person {
        first: "Elena",
        last: "Petrova",
        email: "elena.petrova@figma.com",
        company: "Figma",
        title: "Engineering Manager",
        status: ContactStatus::MeetingBooked,
    },
];

const COMPANIES: &[(&str, &str, &str, &str)] = &[
    ("Notion", "notion.so", "Productivity software", "501-1000"),
    ("Acme", "acme.com", "Manufacturing", "1001-5000"),
    ("Figma", "figma.com", "Design software", "1001-5000"),
];

/// Generated companies for the generated contacts (names that cannot collide with the named ones).
const GENERATED_COMPANIES: &[(&str, &str, &str)] = &[
    ("Brightwave", "brightwave.io", "Fintech"),
    ("Copperline", "copperline.com", "Logistics"),
    ("Driftwood Labs", "driftwoodlabs.dev", "Developer tools"),
    ("Evergreen Health", "evergreenhealth.org", "Healthcare"),
    ("Foxglove", "foxglove.ai", "AI"),
    ("Granite Systems", "granitesystems.com", "Infrastructure"),
    ("Harborview", "harborview.co", "Real estate"),
    ("Ironbark", "ironbark.io", "Security"),
    ("Juniper Retail", "juniperretail.com", "Retail"),
    ("Kestrel Analytics", "kestrel.dev", "Analytics"),
    ("Lumen Bio", "lumenbio.com", "Biotech"),
    ("Meridian Travel", "meridiantravel.com", "Travel"),
];

const FIRST: &[&str] = &[
    "Alex", "Beatriz", "Carlos", "Dana", "Emeka", "Fatima", "Gustav", "Hana", "Ibrahim", "Jun",
    "Katarina", "Liam", "Mei", "Nikhil", "Olga", "Pablo", "Quinn", "Rosa", "Tomas", "Uma",
    "Viktor", "Wen", "Yusuf", "Zara", "Amara", "Bruno", "Chloe", "Diego", "Ingrid", "Kofi",
];

const LAST: &[&str] = &[
    "Abara",
    "Berg",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Gallo",
    "Hoang",
    "Ivanov",
    "Jensen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Pereira",
    "Quispe",
    "Rossi",
    "Sato",
    "Tanaka",
    "Ueda",
    "Varga",
    "Weber",
    "Yilmaz",
    "Zhou",
    "Alvarez",
    "Bianchi",
    "Castillo",
];

const TITLES: &[&str] = &[
    "CEO",
    "CTO",
    "VP of Sales",
    "Head of Growth",
    "Engineering Manager",
    "Founder",
    "Director of Marketing",
    "Product Lead",
    "COO",
    "Head of Partnerships",
];

fn set(s: &str) -> Option<Patch<String>> {
    Some(Patch::Set(s.to_string()))
}

/// Seeds the demo org into `conn` unless it exists. Returns whether anything was written.
pub fn seed(conn: &Connection) -> ApiResult<bool> {
    if orgs::get(conn, DEMO_ORG)?.is_some() {
        return Ok(false);
    }
    orgs::create(
        conn,
        &orgs::NewOrg {
            id: DEMO_ORG.into(),
            plan: Plan::Pro,
            rate_limit: Some(60),
            pilot_mode: PilotMode::Auto,
        },
    )?;
    let org = DEMO_ORG;
    let now = Utc::now();
    let ago = |mins: i64| to_rfc3339(now - Duration::minutes(mins));

    for (name, domain, industry, size) in COMPANIES {
        let mut f = CompanyFields::named(name, Some(domain));
        f.industry = set(industry);
        f.size = set(size);
        companies::create_many(conn, org, &[f], false)?;
    }
    for (name, domain, industry) in GENERATED_COMPANIES {
        let mut f = CompanyFields::named(name, Some(domain));
        f.industry = set(industry);
        companies::create_many(conn, org, &[f], false)?;
    }

    let mut named = Vec::new();
    for p in NAMED {
        let f = ContactFields {
            email: set(p.email),
            first_name: set(p.first),
            last_name: set(p.last),
            company: set(p.company),
            title: set(p.title),
            linkedin_url: Some(Patch::Set(format!(
                "https://www.linkedin.com/in/{}-{}",
                p.first.to_lowercase(),
                p.last.to_lowercase()
            ))),
            status: Some(p.status),
            ..Default::default()
        };
        named.push(contacts::insert(conn, org, &f)?);
    }

    // A small deterministic generator keeps the workspace identical on every machine.
    let mut state: u64 = 0x5eed_f00d;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    let statuses = ContactStatus::ALL;
    let mut generated = Vec::with_capacity(GENERATED_CONTACTS);
    for i in 0..GENERATED_CONTACTS {
        let first = FIRST[i % FIRST.len()];
        let last = LAST[(i / FIRST.len() + i * 7) % LAST.len()];
        let (company, domain, _) = GENERATED_COMPANIES[next(GENERATED_COMPANIES.len())];
        let f = ContactFields {
            email: Some(Patch::Set(format!(
                "{}.{}{}@{}",
                first.to_lowercase(),
                last.to_lowercase(),
                i,
                domain
            ))),
            first_name: set(first),
            last_name: set(last),
            company: set(company),
            title: set(TITLES[next(TITLES.len())]),
            status: Some(statuses[next(statuses.len() - 1)]),
            ..Default::default()
        };
        generated.push(contacts::insert(conn, org, &f)?);
    }

    let seed = campaigns::create(
        conn,
        org,
        &NewCampaign {
            name: "Seed founders",
            status: CampaignStatus::Active,
            kind: "email",
            steps: json!([{"day": 0, "channel": "email", "subject": "Quick idea for {{company}}"},
                          {"day": 3, "channel": "linkedin", "subject": "Following up"}]),
        },
    )?;
    let q4 = campaigns::create(
        conn,
        org,
        &NewCampaign {
            name: "Q4 Enterprise",
            status: CampaignStatus::Active,
            kind: "multichannel",
            steps: json!([{"day": 0, "channel": "email", "subject": "Planning for Q4"}]),
        },
    )?;
    let spring = campaigns::create(
        conn,
        org,
        &NewCampaign {
            name: "Spring launch",
            status: CampaignStatus::Active,
            kind: "email",
            steps: json!([]),
        },
    )?;
    // Audiences are filled while the campaigns run, then the two are set to their demo state.
    for c in generated.iter().take(12) {
        campaigns::add_to_audience(conn, org, &seed, &c.id)?;
    }
    campaigns::add_to_audience(conn, org, &seed, &named[3].id)?;
    for c in generated.iter().skip(12).take(20) {
        campaigns::add_to_audience(conn, org, &q4, &c.id)?;
    }
    campaigns::add_to_audience(conn, org, &q4, &named[1].id)?;
    for c in generated.iter().skip(32).take(5) {
        campaigns::add_to_audience(conn, org, &spring, &c.id)?;
    }
    for (i, c) in generated.iter().skip(12).take(4).enumerate() {
        let status = if i % 2 == 0 { "completed" } else { "bounced" };
        conn.execute(
            "UPDATE campaign_audiences SET status = ?1 WHERE campaign_id = ?2 AND contact_id = ?3",
            rusqlite::params![status, q4.id, c.id],
        )?;
    }
    campaigns::set_status(conn, org, &q4.id, CampaignStatus::Paused)?;
    campaigns::set_status(conn, org, &spring.id, CampaignStatus::Draft)?;

    let sarah = &named[0];
    let john = &named[1];
    let sarah_kim = &named[2];
    let marcus = &named[4];
    let demo_signals = [
        NewSignal {
            contact_id: Some(&sarah.id),
            company: Some("Notion"),
            platform: "linkedin",
            signal_type: "job_change",
            title: "Sarah Chen posted about scaling the platform team",
            content: Some("Hiring 12 engineers for the platform group this quarter."),
            url: Some("https://www.linkedin.com/feed/"),
            intent_score: 82,
            detected_at: &ago(60 * 20),
        },
        NewSignal {
            contact_id: None,
            company: Some("Notion"),
            platform: "website",
            signal_type: "pricing_visit",
            title: "Notion visited the pricing page three times",
            content: None,
            url: None,
            intent_score: 74,
            detected_at: &ago(60 * 5),
        },
        NewSignal {
            contact_id: Some(&john.id),
            company: Some("Acme"),
            platform: "news",
            signal_type: "funding",
            title: "Acme raised a 40 million dollar Series B",
            content: Some("The round will fund expansion into Europe."),
            url: Some("https://news.example.com/acme-series-b"),
            intent_score: 67,
            detected_at: &ago(60 * 24 * 2),
        },
        NewSignal {
            contact_id: None,
            company: Some("Acme"),
            platform: "twitter",
            signal_type: "mention",
            title: "Acme asked for outreach tool recommendations",
            content: None,
            url: None,
            intent_score: 58,
            detected_at: &ago(60 * 24 * 4),
        },
        NewSignal {
            contact_id: Some(&sarah_kim.id),
            company: Some("Figma"),
            platform: "linkedin",
            signal_type: "engagement",
            title: "Sarah Kim liked your post on design systems",
            content: None,
            url: None,
            intent_score: 35,
            detected_at: &ago(60 * 24 * 12),
        },
    ];
    for s in &demo_signals {
        signals::insert(conn, org, s)?;
    }

    let replies = [
        (
            sarah,
            "Re: Quick idea for Notion",
            "Thanks for reaching out. Can we talk next week about the platform team?",
            90,
        ),
        (
            john,
            "Re: Planning for Q4",
            "Interesting. Send me pricing for 50 seats.",
            60 * 6,
        ),
        (
            marcus,
            "Re: Quick idea for Acme",
            "Not the right time, maybe in spring.",
            60 * 30,
        ),
    ];
    for (c, subject, body, mins) in replies {
        interactions::insert(
            conn,
            org,
            &NewInteraction {
                contact_id: Some(&c.id),
                campaign_id: Some(&seed.id),
                direction: "outbound",
                channel: "email",
                subject: Some(subject.trim_start_matches("Re: ")),
                content: "Hi, I had a quick idea for your team.",
                metadata: json!({}),
                is_read: true,
                idempotency_key: None,
                created_at: Some(&ago(mins + 60 * 24)),
            },
        )?;
        interactions::insert(
            conn,
            org,
            &NewInteraction {
                contact_id: Some(&c.id),
                campaign_id: Some(&seed.id),
                direction: "inbound",
                channel: "email",
                subject: Some(subject),
                content: body,
                metadata: json!({}),
                is_read: mins > 60 * 24,
                idempotency_key: None,
                created_at: Some(&ago(mins)),
            },
        )?;
    }
    interactions::insert(
        conn,
        org,
        &NewInteraction {
            contact_id: Some(&sarah_kim.id),
            campaign_id: None,
            direction: "inbound",
            channel: "linkedin",
            subject: None,
            content: "Happy to connect. What does your team do?",
            metadata: json!({}),
            is_read: false,
            idempotency_key: None,
            created_at: Some(&ago(45)),
        },
    )?;
    interactions::insert(
        conn,
        org,
        &NewInteraction::note(
            &sarah.id,
            "Met at the SaaStr dinner. Cares about developer productivity.",
            json!({ "source": "demo" }),
        ),
    )?;
    Ok(true)
}

/// Given names and family names for synthetic workspaces (none of them "Sarah", "Chen", "John"
/// or "Smith", so the demo's named people stay unambiguous at any size).
const GEN_FIRST: &[&str] = &[
    "Aaron",
    "Abigail",
    "Adrian",
    "Aisha",
    "Alba",
    "Alejandro",
    "Amelia",
    "Anders",
    "Anika",
    "Arjun",
    "Astrid",
    "Aurora",
    "Basil",
    "Bianca",
    "Boris",
    "Camila",
    "Cedric",
    "Celine",
    "Dario",
    "Delia",
    "Dmitri",
    "Eero",
    "Elif",
    "Elliot",
    "Emil",
    "Esther",
    "Fabio",
    "Farah",
    "Felix",
    "Freya",
    "Gabriel",
    "Greta",
    "Hamid",
    "Hector",
    "Helga",
    "Hiro",
    "Idris",
    "Ilse",
    "Imani",
    "Isak",
    "Jonas",
    "Joaquin",
    "Kai",
    "Kalinda",
    "Karim",
    "Kira",
    "Lars",
    "Leila",
    "Lorenzo",
    "Lucia",
    "Magnus",
    "Malik",
    "Marta",
    "Matteo",
    "Milan",
    "Mira",
    "Nadia",
    "Nico",
    "Noor",
    "Oskar",
];

const GEN_LAST: &[&str] = &[
    "Acosta",
    "Adler",
    "Almeida",
    "Andersson",
    "Baptiste",
    "Barros",
    "Becker",
    "Bergstrom",
    "Blanco",
    "Brandt",
    "Carvalho",
    "Cruz",
    "Dahl",
    "Delgado",
    "Dimitrov",
    "Engel",
    "Esposito",
    "Falk",
    "Ferreira",
    "Fontaine",
    "Garcia",
    "Gruber",
    "Haas",
    "Hakimi",
    "Hansen",
    "Herrera",
    "Horvat",
    "Ibrahim",
    "Iglesias",
    "Jaeger",
    "Jovanovic",
    "Kaur",
    "Keller",
    "Kovacs",
    "Kruger",
    "Lang",
    "Larsen",
    "Lehmann",
    "Lopez",
    "Lund",
    "Marino",
    "Mendes",
    "Meyer",
    "Molina",
    "Mueller",
    "Navarro",
    "Nielsen",
    "Novak",
    "Ortiz",
    "Osei",
    "Park",
    "Peralta",
    "Petrov",
    "Quintero",
    "Ramos",
    "Reyes",
    "Richter",
    "Romero",
    "Sandoval",
    "Santos",
    "Schmidt",
    "Silva",
    "Sorensen",
    "Suarez",
    "Tamura",
    "Torres",
    "Vargas",
    "Vasquez",
    "Vogel",
    "Wagner",
    "Walsh",
    "Weiss",
    "Wolf",
    "Yamamoto",
    "Zamora",
    "Zeller",
    "Ziegler",
    "Zimmermann",
    "Abe",
    "Kato",
];

/// Adds `contacts` synthetic contacts to `org` (created as a pro org if missing), with one
/// company per 50 contacts, audiences in a few campaigns, and signals and interactions for a
/// share of them. Inserts go straight through prepared statements in the caller's transaction,
/// so a million contacts take seconds to minutes, not hours. Returns the number of contacts.
pub fn generate(conn: &Connection, org: &str, contacts: usize) -> ApiResult<usize> {
    use crate::text::normalize;
    if orgs::get(conn, org)?.is_none() {
        orgs::create(
            conn,
            &orgs::NewOrg {
                id: org.into(),
                plan: Plan::Pro,
                rate_limit: Some(0),
                pilot_mode: PilotMode::Review,
            },
        )?;
    }
    let now = crate::ids::now_rfc3339();
    let run = &crate::ids::new_id()[..8];
    let n_companies = (contacts / 50).max(1);
    let mut company_ids = Vec::with_capacity(n_companies);
    {
        let mut ins = conn.prepare_cached(
            "INSERT INTO companies (id, org_id, name, name_norm, domain, industry, context, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'Software', '{}', ?6, ?6)",
        )?;
        for i in 0..n_companies {
            let id = crate::ids::new_id();
            let name = format!("Synth {run} Co {i}");
            let domain = format!("synth-{run}-{i}.example");
            ins.execute(rusqlite::params![
                id,
                org,
                name,
                normalize(&name),
                domain,
                now
            ])?;
            company_ids.push((id, name, domain));
        }
    }
    let statuses = ContactStatus::ALL;
    let mut contact_ids = Vec::with_capacity(contacts);
    {
        let mut ins = conn.prepare_cached(
            "INSERT INTO contacts (id, org_id, email, email_lower, email_domain, first_name, last_name, name_norm,
                                   company, company_norm, title, status, account_id, custom_fields, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, '{}', ?13, ?13)",
        )?;
        let mut tok = conn.prepare_cached(
            "INSERT OR IGNORE INTO contact_name_tokens (org_id, token, contact_id) VALUES (?1, ?2, ?3)",
        )?;
        for i in 0..contacts {
            let first = GEN_FIRST[i % GEN_FIRST.len()];
            let last = GEN_LAST[(i / GEN_FIRST.len() + i * 7) % GEN_LAST.len()];
            let (company_id, company, domain) = &company_ids[i % n_companies];
            let id = crate::ids::new_id();
            let email = format!(
                "{}.{}.{i}@{domain}",
                first.to_lowercase(),
                last.to_lowercase()
            );
            let name_norm = format!("{} {}", first.to_lowercase(), last.to_lowercase());
            ins.execute(rusqlite::params![
                id,
                org,
                email,
                domain,
                first,
                last,
                name_norm,
                company,
                normalize(company),
                TITLES[i % TITLES.len()],
                statuses[i % (statuses.len() - 1)],
                company_id,
                now
            ])?;
            tok.execute(rusqlite::params![org, first.to_lowercase(), id])?;
            tok.execute(rusqlite::params![org, last.to_lowercase(), id])?;
            contact_ids.push(id);
        }
    }
    let campaign = campaigns::create(
        conn,
        org,
        &NewCampaign {
            name: &format!("Synthetic outreach {run}"),
            status: CampaignStatus::Active,
            kind: "email",
            steps: json!([]),
        },
    )?;
    {
        let mut aud = conn.prepare_cached(
            "INSERT INTO campaign_audiences (id, org_id, campaign_id, contact_id, status, added_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?5)",
        )?;
        let mut sig = conn.prepare_cached(
            "INSERT INTO signals (id, org_id, contact_id, company, company_norm, platform, signal_type, title, intent_score, status, detected_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'website', 'visit', ?6, ?7, 'new', ?8)",
        )?;
        let mut int = conn.prepare_cached(
            "INSERT INTO interactions (id, org_id, contact_id, direction, channel, subject, content, metadata, is_read, created_at)
             VALUES (?1, ?2, ?3, 'outbound', 'email', 'Quick idea', 'Hi, I had a quick idea for your team.', '{}', 1, ?4)",
        )?;
        for (i, id) in contact_ids.iter().enumerate() {
            if i % 100 == 0 {
                aud.execute(rusqlite::params![
                    crate::ids::new_id(),
                    org,
                    campaign.id,
                    id,
                    now
                ])?;
                let (_, company, _) = &company_ids[i % n_companies];
                sig.execute(rusqlite::params![
                    crate::ids::new_id(),
                    org,
                    id,
                    company,
                    normalize(company),
                    format!("{company} visited the pricing page"),
                    (i % 100) as i64,
                    now
                ])?;
            }
            if i % 20 == 0 {
                int.execute(rusqlite::params![crate::ids::new_id(), org, id, now])?;
            }
        }
    }
    Ok(contacts)
}

/// Makes sure a usable demo key exists and returns the raw value: `fixed` when given (created if
/// missing), else a new key.
pub fn ensure_key(conn: &Connection, fixed: Option<&str>) -> ApiResult<String> {
    let raw = match fixed {
        Some(k) => {
            let hash = keys::hash_key(k);
            match keys::find_by_hash(conn, &hash)? {
                Some((_, rec)) if !rec.revoked && rec.org_id == DEMO_ORG => {
                    return Ok(k.to_string())
                }
                Some(_) => {
                    return Err(crate::error::ApiError::validation(
                        "PILOT_BRIDGE_DEMO_KEY",
                        "that key exists but is revoked or belongs to another org",
                    ))
                }
                None => k.to_string(),
            }
        }
        None => keys::generate_raw_key(),
    };
    keys::insert(conn, DEMO_ORG, "demo", Scope::ALL, &raw)?;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_store, PageRequest};

    #[test]
    fn seeds_once_with_the_documented_records() {
        let (_d, store) = test_store();
        assert!(store.write_sync(|tx| seed(tx)).unwrap());
        assert!(!store.write_sync(|tx| seed(tx)).unwrap());
        store
            .read_sync(|c| {
                let org = orgs::get(c, DEMO_ORG)?.unwrap();
                assert_eq!(
                    (org.plan, org.pilot_mode, org.rate_limit),
                    (Plan::Pro, PilotMode::Auto, Some(60))
                );
                let sarah = contacts::find_by_email(c, DEMO_ORG, "sarah.chen@notion.so")?.unwrap();
                assert_eq!(sarah.title.as_deref(), Some("VP of Engineering"));
                assert_eq!(sarah.status, ContactStatus::Qualified);
                assert!(sarah.account_id.is_some());
                assert_eq!(
                    contacts::ids_by_exact_name(c, DEMO_ORG, "sarah chen", 5)?.len(),
                    1
                );
                assert_eq!(
                    contacts::ids_by_exact_name(c, DEMO_ORG, "john smith", 5)?.len(),
                    1
                );
                let sarahs = contacts::ids_by_token_prefix(c, DEMO_ORG, "sarah", 10)?;
                assert_eq!(sarahs.len(), 2);
                let all = contacts::list(
                    c,
                    DEMO_ORG,
                    &Default::default(),
                    PageRequest {
                        limit: 1,
                        offset: 0,
                    },
                )?;
                assert_eq!(all.total as usize, NAMED.len() + GENERATED_CONTACTS);
                let names: Vec<(String, CampaignStatus)> = campaigns::list(
                    c,
                    DEMO_ORG,
                    &Default::default(),
                    PageRequest {
                        limit: 10,
                        offset: 0,
                    },
                )?
                .items
                .into_iter()
                .map(|c| (c.name, c.status))
                .collect();
                assert!(names.contains(&("Seed founders".into(), CampaignStatus::Active)));
                assert!(names.contains(&("Q4 Enterprise".into(), CampaignStatus::Paused)));
                assert!(names.contains(&("Spring launch".into(), CampaignStatus::Draft)));
                for (id, _) in campaigns::all_names(c, DEMO_ORG, 10)? {
                    assert!(campaigns::audience_stats(c, &id)?.total > 0);
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn generated_workspaces_are_searchable_and_keep_demo_names_unique() {
        let (_d, store) = test_store();
        store.write_sync(|tx| seed(tx)).unwrap();
        assert_eq!(
            store
                .write_sync(|tx| generate(tx, DEMO_ORG, 3_000))
                .unwrap(),
            3_000
        );
        store
            .read_sync(|c| {
                let all = contacts::list(
                    c,
                    DEMO_ORG,
                    &Default::default(),
                    PageRequest {
                        limit: 1,
                        offset: 0,
                    },
                )?;
                assert_eq!(all.total as usize, NAMED.len() + GENERATED_CONTACTS + 3_000);
                assert_eq!(
                    contacts::ids_by_exact_name(c, DEMO_ORG, "sarah chen", 5)?.len(),
                    1
                );
                assert!(!contacts::ids_by_token_prefix(c, DEMO_ORG, "oskar", 5)?.is_empty());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn fixed_demo_key_is_reused() {
        let (_d, store) = test_store();
        store.write_sync(|tx| seed(tx)).unwrap();
        let k = "op_live_demoDEMOdemoDEMOdemoDEMOdemoDEMO12";
        assert_eq!(store.write_sync(|tx| ensure_key(tx, Some(k))).unwrap(), k);
        assert_eq!(store.write_sync(|tx| ensure_key(tx, Some(k))).unwrap(), k);
        let n = store
            .read_sync(|c| keys::list(c, Some(DEMO_ORG)))
            .unwrap()
            .len();
        assert_eq!(n, 1);
    }
}

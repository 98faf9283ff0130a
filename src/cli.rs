//! The command line (DESIGN §12): `serve`, `keys create|revoke|list`, `org create|set|show`.
//! Every flag has a `PILOT_BRIDGE_*` environment twin; flags beat env beat the config file beat
//! defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};

use crate::config::{BackendKind, Config, LogFormat, StateBackend};
use crate::demo;
use crate::domain::{KeyPolicy, PilotMode, Plan, Scope, TimeZone};
use crate::store::{keys, orgs, Store};

/// The key `serve --demo` uses unless `PILOT_BRIDGE_DEMO_KEY` says otherwise. It is public on
/// purpose, so the README's curl examples work verbatim; it only ever opens the demo org.
pub const DEFAULT_DEMO_KEY: &str = "op_live_DemoKeyForLocalTestingOnly00000000";

#[derive(Parser, Debug)]
#[command(
    name = "pilot-bridge",
    version,
    about = "Low-latency voice and agent gateway for OutreachPilot-compatible CRMs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP/WebSocket server.
    Serve(ServeArgs),
    /// Create, revoke and list API keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Create, change and show organisations.
    Org {
        #[command(subcommand)]
        cmd: OrgCmd,
    },
    /// Synthetic workspaces for load and scale tests.
    Demo {
        #[command(subcommand)]
        cmd: DemoCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum DemoCmd {
    /// Add N synthetic contacts (with companies, a campaign, signals and interactions) to an org.
    Generate {
        #[command(flatten)]
        common: Common,
        /// How many contacts to add
        #[arg(long, env = "PILOT_BRIDGE_GENERATE_CONTACTS")]
        contacts: usize,
        /// Org to fill (created as a pro org without rate limit if missing)
        #[arg(long, env = "PILOT_BRIDGE_ORG", default_value = "demo")]
        org: String,
    },
}

/// Where the data lives; shared by every command.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Directory holding the database [default: ./data]
    #[arg(long, env = "PILOT_BRIDGE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file (see deploy/pilot-bridge.toml)
    #[arg(long, env = "PILOT_BRIDGE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "PILOT_BRIDGE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Serve /metrics only on this second address (the main listener then answers 404 there)
    #[arg(long, env = "PILOT_BRIDGE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seed the demo workspace (when absent) and print a ready API key
    #[arg(long, env = "PILOT_BRIDGE_DEMO")]
    pub demo: bool,
    /// Fixed value for the demo key
    #[arg(long, env = "PILOT_BRIDGE_DEMO_KEY", hide_env_values = true)]
    pub demo_key: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "PILOT_BRIDGE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Access log lines at INFO: 1 = every request, N = one in N, 0 = off [default: 1]
    #[arg(long, env = "PILOT_BRIDGE_ACCESS_LOG_SAMPLE")]
    pub access_log_sample: Option<u32>,
    /// Requests per minute per org when the org sets none; 0 = off [default: 60]
    #[arg(long, env = "PILOT_BRIDGE_DEFAULT_RATE_LIMIT")]
    pub default_rate_limit: Option<u32>,
    /// After SIGTERM, serve this long with /readyz answering 503 before draining [default: 0]
    #[arg(long, env = "PILOT_BRIDGE_SHUTDOWN_DELAY_MS")]
    pub shutdown_delay_ms: Option<u64>,
    /// CRM backend: embedded (SQLite in --data-dir) or upstream (a remote REST v1 API)
    /// [default: embedded]
    #[arg(long, env = "PILOT_BRIDGE_BACKEND", value_enum)]
    pub backend: Option<BackendKind>,
    /// Base URL of the upstream API for --backend upstream, e.g. https://crm.example.com
    #[arg(long, alias = "upstream-url", env = "PILOT_BRIDGE_UPSTREAM_BASE_URL")]
    pub upstream_base_url: Option<String>,
    /// Conversation state: sqlite (one process) or redis (shared by replicas) [default: sqlite]
    #[arg(long, env = "PILOT_BRIDGE_STATE_BACKEND", value_enum)]
    pub state_backend: Option<StateBackend>,
    /// Redis for --state-backend redis [default: redis://127.0.0.1:6379/0]
    #[arg(long, env = "PILOT_BRIDGE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create a key and print it (alone) on stdout. It is shown only this once.
    Create {
        #[command(flatten)]
        common: Common,
        /// Organisation the key belongs to
        #[arg(long, env = "PILOT_BRIDGE_ORG")]
        org: String,
        /// A label to recognise the key by
        #[arg(long, env = "PILOT_BRIDGE_KEY_NAME", default_value = "cli")]
        name: String,
        /// Comma-separated scopes, from: contacts, campaigns, chat, native, credits, settings
        /// [default: every scope]
        #[arg(long, env = "PILOT_BRIDGE_SCOPES")]
        scopes: Option<String>,
        /// Give the key the two_step policy: dangerous actions always ask for confirmation,
        /// even with confirmed:true, and only a later request with the pendingActionId runs them
        #[arg(long)]
        two_step: bool,
    },
    /// Revoke a key by id (or by its raw value). It stops working within the key cache TTL.
    Revoke {
        #[command(flatten)]
        common: Common,
        /// The key's id as `keys list` shows it, or the raw key (op_live_...)
        key_id: String,
    },
    /// List keys with their state, creation and last use (never the raw values).
    List {
        #[command(flatten)]
        common: Common,
        /// Only the keys of this organisation
        #[arg(long, env = "PILOT_BRIDGE_ORG")]
        org: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct OrgSettings {
    /// free | pro | scale
    #[arg(long, env = "PILOT_BRIDGE_PLAN")]
    pub plan: Option<Plan>,
    /// Requests per minute; 0 = unlimited
    #[arg(long, env = "PILOT_BRIDGE_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// off | review | auto
    #[arg(long, env = "PILOT_BRIDGE_PILOT_MODE")]
    pub pilot_mode: Option<PilotMode>,
    /// IANA time zone in which times are spoken, e.g. Europe/Berlin [default: UTC]
    #[arg(long, env = "PILOT_BRIDGE_TIMEZONE")]
    pub timezone: Option<TimeZone>,
    /// Credit balance (AI chat costs 1 credit per message)
    // No environment fallback: `org set` would then reset the balance of whatever org it
    // changes whenever the variable happens to be set.
    #[arg(long)]
    pub credits: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum OrgCmd {
    /// Create an organisation (plan defaults to pro), creating the data directory if needed.
    Create {
        #[command(flatten)]
        common: Common,
        /// Organisation id: a short slug such as acme
        org: String,
        #[command(flatten)]
        settings: OrgSettings,
    },
    /// Change an organisation's plan, rate limit, pilot mode, time zone or credit balance.
    Set {
        #[command(flatten)]
        common: Common,
        /// Organisation id
        org: String,
        #[command(flatten)]
        settings: OrgSettings,
    },
    /// Show an organisation as JSON.
    Show {
        #[command(flatten)]
        common: Common,
        /// Organisation id
        org: String,
    },
}

impl clap::builder::ValueParserFactory for Plan {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<Plan>())
    }
}

impl clap::builder::ValueParserFactory for TimeZone {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<TimeZone>())
    }
}

impl clap::builder::ValueParserFactory for PilotMode {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<PilotMode>())
    }
}

/// Config file (if any) with the data-dir override applied.
fn base_config(common: &Common) -> anyhow::Result<Config> {
    let mut cfg = Config::load(common.config.as_deref())?;
    if let Some(d) = &common.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

/// Opens (creating if needed) the data directory's database: for `serve`, `org create` and
/// `demo generate`, which set a workspace up.
fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    Store::open(&cfg.data_dir, &cfg.store_options())
}

/// Opens an existing data directory's database, creating nothing: for commands that read or
/// change records that must exist already.
fn open_existing(cfg: &Config) -> anyhow::Result<Store> {
    Store::open_existing(&cfg.data_dir, &cfg.store_options())
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Keys { cmd } => keys_cmd(cmd),
        Command::Org { cmd } => org_cmd(cmd),
        Command::Demo {
            cmd:
                DemoCmd::Generate {
                    common,
                    contacts,
                    org,
                },
        } => {
            let store = open_store(&base_config(&common)?)?;
            orgs::validate_id(&org).map_err(|e| anyhow!(e))?;
            let started = std::time::Instant::now();
            let n = store.write_sync(|tx| demo::generate(tx, &org, contacts))?;
            store.checkpoint_sync()?;
            eprintln!(
                "added {n} contacts to org {org} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = base_config(&args.common)?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(l) = args.metrics_listen {
        cfg.metrics_listen = Some(l);
    }
    if let Some(f) = args.log_format {
        cfg.log_format = f;
    }
    if let Some(n) = args.access_log_sample {
        cfg.access_log_sample = n;
    }
    if let Some(r) = args.default_rate_limit {
        cfg.limits.default_rate_limit = r;
    }
    if let Some(d) = args.shutdown_delay_ms {
        cfg.shutdown_delay_ms = d;
    }
    if let Some(b) = args.backend {
        cfg.backend = b;
    }
    // PILOT_BRIDGE_UPSTREAM_URL is accepted too, as the shorter name people guess first.
    if let Some(u) = args
        .upstream_base_url
        .or_else(|| std::env::var("PILOT_BRIDGE_UPSTREAM_URL").ok())
    {
        cfg.upstream.base_url = u;
    }
    if args.demo {
        // The demo is tried against receivers on the same machine (a local listener, a tunnel
        // client); this process only, nothing is stored.
        cfg.webhooks.allow_private_targets = true;
    }
    if let Some(b) = args.state_backend {
        cfg.state.backend = b;
    }
    if let Some(u) = args.redis_url {
        cfg.state.redis_url = u;
    }
    cfg.mcp.apply_env();
    cfg.telemetry.apply_env();
    cfg.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let traces = crate::telemetry::init_tracing(cfg.log_format, &cfg.telemetry, runtime.handle())?;
    // Bind first: a busy port must fail before anything is created, seeded or printed.
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    // Held until this function returns: one serving process per data directory.
    let _lock = DataDirLock::acquire(&cfg.data_dir)?;
    let store = open_store(&cfg)?;
    if args.demo {
        let seeded = store.write_sync(|tx| demo::seed(tx))?;
        let fixed = args.demo_key.as_deref().unwrap_or(DEFAULT_DEMO_KEY);
        let key = store.write_sync(|tx| demo::ensure_key(tx, Some(fixed)))?;
        if key == DEFAULT_DEMO_KEY && !cfg.listen.ip().is_loopback() {
            tracing::warn!("the well-known demo key is enabled on a non-loopback address; set PILOT_BRIDGE_DEMO_KEY");
        }
        let mut banner = String::new();
        banner.push_str(&format!(
            "Demo workspace {} (org \"{}\").\n",
            if seeded {
                "created"
            } else {
                "already present, left as it was"
            },
            demo::DEMO_ORG
        ));
        banner.push_str(&format!("API key: {key}\n"));
        banner.push_str(&format!(
            "Try: curl -H \"Authorization: Bearer {key}\" \"http://{addr}/api/v1/contacts?search=sarah\"\n"
        ));
        // A closed stdout (a supervisor that does not read it) must not stop the server.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());
    }
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let server = crate::server::start_on(listener, cfg, store).await?;
        tracing::info!(addr = %server.addr, "pilot-bridge listening");
        if let Some(at) = server.metrics_addr {
            tracing::info!(addr = %at, "metrics listening");
        }
        crate::server::shutdown_signal().await;
        server.shutdown().await;
        // Last, so the turns that finished while draining are sent too.
        if let Some(traces) = traces {
            traces.shutdown().await;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// An exclusive lock on `<data dir>/pilot-bridge.lock`, so two `serve` processes never share
/// one data directory (each would keep its own caches and state in front of the same
/// database). The OS releases it when the process exits, also after `kill -9`, so a stale lock
/// file never blocks a restart. CLI commands such as `keys create` do not take it: they may
/// run while the server does.
struct DataDirLock {
    _file: std::fs::File,
}

/// File name of the lock inside the data directory.
pub const LOCK_FILE: &str = "pilot-bridge.lock";

impl DataDirLock {
    fn acquire(dir: &std::path::Path) -> anyhow::Result<DataDirLock> {
        use std::io::{Read, Seek, Write};
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                anyhow::bail!(
                    "data directory {} is in use by another pilot-bridge process{}; stop it or \
                     use another --data-dir",
                    dir.display(),
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(DataDirLock { _file: file })
    }
}

fn keys_cmd(cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Create {
            common,
            org,
            name,
            scopes,
            two_step,
        } => {
            let scopes = match scopes {
                Some(s) => Scope::parse_list(&s).map_err(|e| anyhow!("--scopes: {e}"))?,
                None => Scope::ALL.to_vec(),
            };
            let store = open_existing(&base_config(&common)?)?;
            let raw = keys::generate_raw_key();
            let policy = match two_step {
                true => KeyPolicy::TwoStep,
                false => KeyPolicy::Standard,
            };
            let info = store.write_sync(|tx| {
                let info = keys::insert(tx, &org, &name, &scopes, &raw)?;
                keys::set_policy(tx, &info.id, policy)?;
                Ok(info)
            })?;
            eprintln!(
                "created key {} for org {} with scopes {} and policy {}",
                info.id,
                org,
                Scope::join(&scopes),
                policy
            );
            println!("{raw}");
            Ok(())
        }
        KeysCmd::Revoke { common, key_id } => {
            let store = open_existing(&base_config(&common)?)?;
            match store.write_sync(|tx| keys::revoke_key(tx, &key_id))? {
                keys::Revocation::Revoked { id } => eprintln!("revoked key {id}"),
                keys::Revocation::AlreadyRevoked { id, revoked_at } => {
                    eprintln!("key {id} was already revoked at {revoked_at}; nothing changed")
                }
            }
            Ok(())
        }
        KeysCmd::List { common, org } => {
            let store = open_existing(&base_config(&common)?)?;
            let list = store.read_sync(|c| keys::list(c, org.as_deref()))?;
            println!(
                "{:<36}  {:<16}  {:<14}  {:<12}  {:<8}  {:<8}  {:<20}  {:<20}  SCOPES",
                "ID", "ORG", "PREFIX", "NAME", "STATE", "POLICY", "CREATED", "LAST USED"
            );
            for k in list {
                println!(
                    "{:<36}  {:<16}  {:<14}  {:<12}  {:<8}  {:<8}  {:<20}  {:<20}  {}",
                    k.id,
                    k.org_id,
                    format!("{}…", k.prefix),
                    k.name,
                    if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    },
                    k.policy.as_str(),
                    short_time(&k.created_at),
                    k.last_used_at.as_deref().map_or("never", short_time),
                    Scope::join(&k.scopes)
                );
            }
            Ok(())
        }
    }
}

/// "2026-11-29T12:00:00Z" from a stored "2026-11-29T12:00:00.000Z": seconds are enough here.
fn short_time(rfc3339: &str) -> &str {
    rfc3339.get(..19).unwrap_or(rfc3339)
}

fn org_cmd(cmd: OrgCmd) -> anyhow::Result<()> {
    match cmd {
        OrgCmd::Create {
            common,
            org,
            settings,
        } => {
            let store = open_store(&base_config(&common)?)?;
            let new = orgs::NewOrg {
                id: org,
                plan: settings.plan.unwrap_or(Plan::Pro),
                rate_limit: settings.rate_limit,
                pilot_mode: settings.pilot_mode.unwrap_or(PilotMode::Review),
            };
            let timezone = settings.timezone;
            let credits = settings.credits;
            let created = store.write_sync(|tx| {
                let created = orgs::create(tx, &new)?;
                if let Some(n) = credits {
                    crate::chat::store::set_credits(tx, &created.id, n.into())?;
                }
                let created = match credits {
                    Some(_) => orgs::get(tx, &created.id)?
                        .ok_or_else(|| crate::error::ApiError::internal("org vanished"))?,
                    None => created,
                };
                match timezone {
                    Some(zone) => {
                        orgs::set_timezone(tx, &created.id, zone)?;
                        orgs::get(tx, &created.id)?
                            .ok_or_else(|| crate::error::ApiError::internal("org vanished"))
                    }
                    None => Ok(created),
                }
            })?;
            println!("{}", serde_json::to_string_pretty(&created)?);
            Ok(())
        }
        OrgCmd::Set {
            common,
            org,
            settings,
        } => {
            let store = open_existing(&base_config(&common)?)?;
            let changes = orgs::OrgChanges {
                plan: settings.plan,
                rate_limit: settings.rate_limit,
                pilot_mode: settings.pilot_mode,
                timezone: settings.timezone,
            };
            let credits = settings.credits;
            let updated = store.write_sync(|tx| {
                let updated = orgs::update(tx, &org, &changes)?;
                match credits {
                    Some(n) => {
                        crate::chat::store::set_credits(tx, &org, n.into())?;
                        orgs::get(tx, &org)?
                            .ok_or_else(|| crate::error::ApiError::internal("org vanished"))
                    }
                    None => Ok(updated),
                }
            })?;
            println!("{}", serde_json::to_string_pretty(&updated)?);
            Ok(())
        }
        OrgCmd::Show { common, org } => {
            let store = open_existing(&base_config(&common)?)?;
            let found = store
                .read_sync(|c| orgs::get(c, &org))?
                .ok_or_else(|| anyhow!("org '{org}' does not exist"))?;
            println!("{}", serde_json::to_string_pretty(&found)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_shape_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_documented_invocations() {
        let c = Cli::try_parse_from([
            "pilot-bridge",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/x",
            "--demo",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Command::Serve(ServeArgs { demo: true, .. })
        ));
        let c = Cli::try_parse_from([
            "pilot-bridge",
            "keys",
            "create",
            "--org",
            "acme",
            "--scopes",
            "contacts,native",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Command::Keys {
                cmd: KeysCmd::Create { .. }
            }
        ));
        let c = Cli::try_parse_from([
            "pilot-bridge",
            "org",
            "set",
            "acme",
            "--plan",
            "scale",
            "--rate-limit",
            "0",
            "--pilot-mode",
            "auto",
        ])
        .unwrap();
        match c.command {
            Command::Org {
                cmd: OrgCmd::Set { settings, .. },
            } => {
                assert_eq!(settings.plan, Some(Plan::Scale));
                assert_eq!(settings.rate_limit, Some(0));
                assert_eq!(settings.pilot_mode, Some(PilotMode::Auto));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Cli::try_parse_from(["pilot-bridge", "org", "set", "acme", "--plan", "gold"]).is_err()
        );
    }
}

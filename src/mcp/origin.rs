//! Which `Host` and `Origin` headers `/mcp` accepts: the MCP transport's protection against DNS
//! rebinding and cross-site requests from browsers, from `[mcp] allowed_hosts` and
//! `allowed_origins`.
//!
//! A request is served when its `Host` is allowed and, if it carries an `Origin` (browsers do;
//! other clients do not), that origin is listed or is the server's own (its host and port equal
//! the request's `Host`). A rebinding page's requests carry its own name in both headers, so
//! they fail the `Host` check unless the operator allowed every host.

use crate::config::McpConfig;
use crate::error::{ApiError, ErrorCode};

/// A host and an optional port, lower-cased, IPv6 without brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authority {
    host: String,
    port: Option<u16>,
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` (a bare IPv6 address has no port).
fn parse_authority(s: &str) -> Option<Authority> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        (host, port)
    } else {
        match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => (s, None),
            Some((h, p)) => (h, Some(p.parse().ok()?)),
            None => (s, None),
        }
    };
    let bad = |c: char| c.is_whitespace() || c.is_control() || "/?#@\\[]".contains(c);
    if host.is_empty() || host.chars().any(bad) {
        return None;
    }
    Some(Authority {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// A browser origin: `scheme://host[:port]` with the scheme's default port filled in, or the
/// opaque `null`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Null,
    Tuple {
        scheme: String,
        host: String,
        port: u16,
    },
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn parse_origin(s: &str) -> Option<Origin> {
    let s = s.trim();
    if s == "null" {
        return Some(Origin::Null);
    }
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let a = parse_authority(rest)?;
    let port = match a.port {
        Some(p) => p,
        None => default_port(&scheme)?,
    };
    Some(Origin::Tuple {
        scheme,
        host: a.host,
        port,
    })
}

/// One `allowed_origins` entry: an origin, or one whose port is `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    Exact(Origin),
    AnyPort { scheme: String, host: String },
}

fn parse_origin_rule(s: &str) -> Option<OriginRule> {
    if let Some(base) = s.trim().strip_suffix(":*") {
        let (scheme, host) = base.split_once("://")?;
        let a = parse_authority(host).filter(|a| a.port.is_none())?;
        return Some(OriginRule::AnyPort {
            scheme: scheme.to_ascii_lowercase(),
            host: a.host,
        });
    }
    parse_origin(s).map(OriginRule::Exact)
}

/// The parsed `[mcp]` allow-lists.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    any_host: bool,
    hosts: Vec<Authority>,
    any_origin: bool,
    origins: Vec<OriginRule>,
}

impl OriginPolicy {
    /// Parses the allow-lists; an entry that cannot match anything is an error naming it.
    pub fn new(cfg: &McpConfig) -> Result<OriginPolicy, String> {
        let mut policy = OriginPolicy {
            any_host: false,
            hosts: Vec::new(),
            any_origin: false,
            origins: Vec::new(),
        };
        for entry in &cfg.allowed_hosts {
            if entry.trim() == "*" {
                policy.any_host = true;
            } else {
                policy.hosts.push(parse_authority(entry).ok_or_else(|| {
                    format!("mcp.allowed_hosts entry {entry:?} must be a host name or host:port")
                })?);
            }
        }
        for entry in &cfg.allowed_origins {
            if entry.trim() == "*" {
                policy.any_origin = true;
            } else {
                policy.origins.push(parse_origin_rule(entry).ok_or_else(|| {
                    format!(
                        "mcp.allowed_origins entry {entry:?} must be scheme://host[:port], \
                         scheme://host:*, null or *"
                    )
                })?);
            }
        }
        Ok(policy)
    }

    /// Checks a request's `Host` (or URI authority) and `Origin` header values. `None` means
    /// the header is absent; a header that is not valid UTF-8 arrives as `Some("")`.
    pub fn check(&self, host: Option<&str>, origin: Option<&str>) -> Result<(), ApiError> {
        let host_value = host.unwrap_or("");
        let request_host = parse_authority(host_value);
        let host_ok = self.any_host
            || request_host.as_ref().is_some_and(|h| {
                self.hosts
                    .iter()
                    .any(|a| a.host == h.host && (a.port.is_none() || a.port == h.port))
            });
        if !host_ok {
            return Err(refused(format!(
                "Host: {:?} is not in [mcp] allowed_hosts",
                crate::text::clip(host_value, 100)
            )));
        }
        let Some(origin_value) = origin else {
            return Ok(());
        };
        if self.any_origin {
            return Ok(());
        }
        let own = |o: &Origin| match (o, &request_host) {
            (Origin::Tuple { host, port, .. }, Some(h)) => {
                *host == h.host && Some(*port) == h.port.or_else(|| origin_default(o))
            }
            _ => false,
        };
        let listed = |o: &Origin| {
            self.origins.iter().any(|rule| match (rule, o) {
                (OriginRule::Exact(allowed), o) => allowed == o,
                (
                    OriginRule::AnyPort { scheme, host },
                    Origin::Tuple {
                        scheme: s, host: h, ..
                    },
                ) => scheme == s && host == h,
                (OriginRule::AnyPort { .. }, Origin::Null) => false,
            })
        };
        match parse_origin(origin_value) {
            Some(o) if own(&o) || listed(&o) => Ok(()),
            _ => Err(refused(format!(
                "Origin: {:?} is not in [mcp] allowed_origins",
                crate::text::clip(origin_value, 100)
            ))),
        }
    }
}

/// The default port of an origin's scheme: a `Host` without a port means that port.
fn origin_default(o: &Origin) -> Option<u16> {
    match o {
        Origin::Tuple { scheme, .. } => default_port(scheme),
        Origin::Null => None,
    }
}

fn refused(details: String) -> ApiError {
    ApiError::new(
        ErrorCode::OriginNotAllowed,
        "This origin may not use the MCP endpoint",
    )
    .with_details(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], origins: &[&str]) -> OriginPolicy {
        OriginPolicy::new(&McpConfig {
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn default_policy_serves_loopback_hosts_only() {
        let p = OriginPolicy::new(&McpConfig::default()).unwrap();
        for host in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9000",
            "[::1]",
        ] {
            assert!(p.check(Some(host), None).is_ok(), "{host}");
        }
        for host in ["evil.example.com", "evil.example.com:8080", "10.0.0.1", ""] {
            let e = p.check(Some(host), None).unwrap_err();
            assert_eq!(e.code, ErrorCode::OriginNotAllowed);
            assert_eq!(e.status(), 403);
            assert!(e.details.unwrap().starts_with("Host: "));
        }
        assert!(p.check(None, None).is_err());
    }

    #[test]
    fn own_origin_is_allowed_and_others_are_not() {
        let p = OriginPolicy::new(&McpConfig::default()).unwrap();
        // (host, origin, allowed)
        let table = [
            ("127.0.0.1:8080", "http://127.0.0.1:8080", true),
            ("localhost:8080", "http://localhost:8080", true),
            ("localhost", "http://localhost", true),
            // A Host without a port is the default port of whichever scheme the client used
            // (TLS may end at a proxy in front).
            ("localhost", "https://localhost", true),
            ("localhost", "http://localhost:8080", false),
            ("127.0.0.1:8080", "http://127.0.0.1:9999", false),
            ("127.0.0.1:8080", "http://evil.example.com", false),
            ("127.0.0.1:8080", "null", false),
            ("127.0.0.1:8080", "not an origin", false),
            ("127.0.0.1:8080", "", false),
        ];
        for (host, origin, allowed) in table {
            let r = p.check(Some(host), Some(origin));
            assert_eq!(r.is_ok(), allowed, "{host} {origin}");
            if let Err(e) = r {
                assert!(e.details.unwrap().starts_with("Origin: "));
            }
        }
    }

    #[test]
    fn listed_origins_and_wildcards() {
        let p = policy(
            &["mcp.example.com", "127.0.0.1:8080"],
            &["https://app.example.com", "http://localhost:*", "null"],
        );
        let host = Some("mcp.example.com");
        assert!(p.check(host, Some("https://app.example.com")).is_ok());
        assert!(p.check(host, Some("https://app.example.com:443")).is_ok());
        assert!(p.check(host, Some("https://app.example.com:8443")).is_err());
        assert!(p.check(host, Some("http://localhost:6274")).is_ok());
        assert!(p.check(host, Some("null")).is_ok());
        assert!(p.check(Some("127.0.0.1:8080"), None).is_ok());
        assert!(p.check(Some("127.0.0.1:8081"), None).is_err());
        let any = policy(&["*"], &["*"]);
        assert!(any
            .check(Some("evil.example.com"), Some("http://evil.example.com"))
            .is_ok());
    }

    #[test]
    fn bad_entries_are_named() {
        for (hosts, origins, named) in [
            (vec!["exa mple.com"], vec![], "mcp.allowed_hosts"),
            (vec!["host:port"], vec![], "mcp.allowed_hosts"),
            (vec![], vec!["example.com"], "mcp.allowed_origins"),
            (vec![], vec!["ftp://example.com"], "mcp.allowed_origins"),
        ] {
            let e = OriginPolicy::new(&McpConfig {
                allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
                allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            })
            .unwrap_err();
            assert!(e.contains(named) && e.contains("must"), "{e}");
        }
    }
}

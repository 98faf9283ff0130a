//! The SSRF guard: webhook targets must not reach loopback, private, link-local or
//! cloud-metadata addresses (unless `[webhooks] allow_private_targets`). Checked when a
//! subscription is registered and again at every delivery, where the check sits in the DNS
//! resolver the delivery client connects with, so a name that re-resolves to an internal
//! address after registration (DNS rebinding) is refused too.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// How long registration waits for DNS before accepting a name it could not resolve (every
/// delivery checks again).
const REGISTRATION_DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an address may not be a webhook target, or `None` when it may.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, d] = ip.octets();
    if ip.is_loopback() {
        return Some("loopback");
    }
    // AWS, GCP, Azure, OpenStack (169.254.169.254), Alibaba (100.100.100.200) and Azure's
    // wire server (168.63.129.16).
    if (a, b, c, d) == (169, 254, 169, 254)
        || (a, b, c, d) == (100, 100, 100, 200)
        || (a, b, c, d) == (168, 63, 129, 16)
    {
        return Some("cloud metadata");
    }
    if ip.is_link_local() {
        return Some("link-local");
    }
    if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        // RFC 1918 and the carrier-grade NAT range (RFC 6598).
        return Some("private");
    }
    if a == 0 {
        return Some("unspecified");
    }
    if ip.is_multicast() || a >= 240 || (a, b, c) == (192, 0, 0) || (a == 198 && (b & 0xfe) == 18) {
        // Multicast, reserved and broadcast, IETF protocol assignments, benchmarking.
        return Some("reserved");
    }
    None
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refusal_v4(v4);
    }
    // Forms that carry an IPv4 address a router or host may translate to and reach: the
    // address is judged as that IPv4 address.
    if let Some(v4) = embedded_v4(ip) {
        return refusal_v4(v4);
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    let seg = ip.segments();
    if seg == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] {
        return Some("cloud metadata");
    }
    if (seg[0] & 0xffc0) == 0xfe80 {
        return Some("link-local");
    }
    if (seg[0] & 0xfe00) == 0xfc00 {
        return Some("private");
    }
    if ip.is_multicast() {
        return Some("reserved");
    }
    None
}

/// The IPv4 address inside an IPv6 address that embeds one: NAT64 (`64:ff9b::/96`, RFC 6052),
/// 6to4 (`2002:AABB:CCDD::/48`, RFC 3056) and IPv4-compatible (`::a.b.c.d`, deprecated by
/// RFC 4291 but still routed by some stacks; `::` and `::1` are left to the checks below).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(v4(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return Some(v4(seg[1], seg[2]));
    }
    if seg[..6] == [0; 6] && !(seg[6] == 0 && seg[7] <= 1) {
        return Some(v4(seg[6], seg[7]));
    }
    None
}

/// A target the guard refused: what was asked for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub host: String,
    pub addr: Option<IpAddr>,
    pub reason: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(a) if a.to_string() != self.host => write!(
                f,
                "{} resolves to {a}, a {} address",
                self.host, self.reason
            ),
            _ => write!(f, "{} is a {} address", self.host, self.reason),
        }
    }
}

impl std::error::Error for Refused {}

/// The first refused address among `addrs`, if any.
fn first_refused(host: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Option<Refused> {
    addrs.into_iter().find_map(|ip| {
        refusal(ip).map(|reason| Refused {
            host: host.to_string(),
            addr: Some(ip),
            reason,
        })
    })
}

/// The host of `url` as an IP address, when it is a literal (`[::1]` loses its brackets).
fn literal_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Checks what can be checked without DNS: an IP-literal host (which the delivery client
/// connects to without asking its resolver) and `localhost` names.
pub fn check_literal(url: &Url) -> Result<(), Refused> {
    if let Some(ip) = literal_ip(url) {
        return match first_refused(&ip.to_string(), [ip]) {
            Some(r) => Err(r),
            None => Ok(()),
        };
    }
    let host = url
        .host_str()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return Err(Refused {
            host,
            addr: None,
            reason: "loopback",
        });
    }
    Ok(())
}

/// The registration-time check: literal hosts, then every address the name resolves to now.
/// A name that does not resolve within a short wait is accepted: deliveries check again.
pub async fn check_registration(url: &Url) -> Result<(), Refused> {
    check_literal(url)?;
    if literal_ip(url).is_some() {
        return Ok(());
    }
    let Some(host) = url.host_str() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(REGISTRATION_DNS_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => match first_refused(host, addrs.map(|a| a.ip())) {
            Some(r) => Err(r),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// How the delivery client turns a host name into addresses, beneath the guard: the system
/// resolver in production ([`SystemLookup`]). The seam exists so a test can point a name at a
/// local receiver without DNS while the guard it runs is this module's.
pub trait LookupHost: Send + Sync + 'static {
    fn lookup(&self, host: String)
        -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
}

/// The operating system's resolver (`getaddrinfo`, on tokio's blocking pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemLookup;

impl LookupHost for SystemLookup {
    fn lookup(
        &self,
        host: String,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// The delivery client's DNS resolver: `lookup`, refusing names that resolve to an address the
/// guard forbids (unless private targets are allowed). The address reqwest connects to is one
/// this resolver returned, so the check cannot be raced by a second lookup.
pub struct GuardedResolver {
    lookup: Arc<dyn LookupHost>,
    guard: bool,
}

impl GuardedResolver {
    pub fn new(lookup: Arc<dyn LookupHost>, allow_private: bool) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            lookup,
            guard: !allow_private,
        })
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let lookup = self.lookup.lookup(host.clone());
        let guard = self.guard;
        Box::pin(async move {
            let ips = lookup.await?;
            if guard {
                if let Some(r) = first_refused(&host, ips.iter().copied()) {
                    return Err(Box::new(r) as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            // Port 0: the connector puts the URL's port in.
            Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0))) as Addrs)
        })
    }
}

/// The guard's refusal inside an error's source chain (how a refused delivery is told apart
/// from a network error).
pub fn refused_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> Option<&'static str> {
        refusal(s.parse().unwrap())
    }

    #[test]
    fn internal_addresses_are_refused_with_their_reason() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("fd12:3456::1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("fd00:ec2::254", "cloud metadata"),
            ("100.100.100.200", "cloud metadata"),
            ("169.254.10.10", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::c0a8:101", "private"),
            ("64:ff9b::10.0.0.1", "private"),
            // 6to4: the IPv4 address is in bits 16..48.
            ("2002:7f00:1::", "loopback"),
            ("2002:a00:1::1", "private"),
            ("2002:c0a8:101:1::1", "private"),
            ("2002:a9fe:a9fe::", "cloud metadata"),
            // IPv4-compatible.
            ("::127.0.0.1", "loopback"),
            ("::10.0.0.1", "private"),
            ("::169.254.169.254", "cloud metadata"),
            ("::0.0.0.2", "unspecified"),
            ("224.0.0.1", "reserved"),
            ("255.255.255.255", "reserved"),
        ] {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.215.14",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            // Embedded IPv4 addresses that are public.
            "64:ff9b::808:808",
            "2002:5db8:d70e::1",
            "::8.8.8.8",
        ] {
            assert_eq!(reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn literal_hosts_and_localhost_are_checked_without_dns() {
        let check = |u: &str| check_literal(&Url::parse(u).unwrap());
        assert_eq!(
            check("http://127.0.0.1:9/x").unwrap_err().reason,
            "loopback"
        );
        assert_eq!(check("http://[::1]/").unwrap_err().reason, "loopback");
        assert_eq!(check("http://LOCALHOST./").unwrap_err().reason, "loopback");
        assert_eq!(
            check("http://api.localhost/").unwrap_err().reason,
            "loopback"
        );
        assert_eq!(
            check("http://169.254.169.254/latest/meta-data")
                .unwrap_err()
                .to_string(),
            "169.254.169.254 is a cloud metadata address"
        );
        assert!(check("https://hooks.example.com/x").is_ok());
        assert!(check("https://93.184.215.14/x").is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_internal_addresses() {
        let err = GuardedResolver::new(Arc::new(SystemLookup), false)
            .resolve("localhost".parse::<Name>().expect("a DNS name"))
            .await
            .err()
            .expect("localhost resolves to loopback");
        let refused = refused_in(err.as_ref()).expect("a refusal");
        assert_eq!(refused.reason, "loopback");
        assert!(refused.to_string().starts_with("localhost resolves to "));
    }

    /// Answers every name with one address.
    struct Always(IpAddr);

    impl LookupHost for Always {
        fn lookup(
            &self,
            _host: String,
        ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
            let ip = self.0;
            Box::pin(async move { Ok(vec![ip]) })
        }
    }

    #[tokio::test]
    async fn the_guard_judges_what_the_lookup_returns() {
        let name = || "rebind.test".parse::<Name>().expect("a DNS name");
        let loopback = Arc::new(Always("127.0.0.1".parse().unwrap()));
        let err = GuardedResolver::new(loopback.clone(), false)
            .resolve(name())
            .await
            .err()
            .expect("refused");
        assert_eq!(
            refused_in(err.as_ref()).map(|r| r.to_string()).as_deref(),
            Some("rebind.test resolves to 127.0.0.1, a loopback address")
        );
        let allowed: Vec<SocketAddr> = GuardedResolver::new(loopback, true)
            .resolve(name())
            .await
            .expect("private targets allowed")
            .collect();
        assert_eq!(allowed, ["127.0.0.1:0".parse().unwrap()]);
        let public: Vec<SocketAddr> =
            GuardedResolver::new(Arc::new(Always("93.184.215.14".parse().unwrap())), false)
                .resolve(name())
                .await
                .expect("a public address passes")
                .collect();
        assert_eq!(public.len(), 1);
    }
}

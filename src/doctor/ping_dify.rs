//! `ping-dify` (the guide's problems 4 and 11: timeouts, container DNS): what the guide did
//! with nslookup, telnet and curl, layer by layer, so a failure names its layer and the fix
//! for that layer. DNS with hickory-resolver on the system's configuration (and `--dns` to
//! compare with another server), TCP connect per address, then TLS and HTTP through the Dify
//! client `serve` uses (same timeouts, proxies and trust roots). Any HTTP answer means
//! reachable: Dify's base URL itself answers 404.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use reqwest::Url;
use serde::Serialize;

use super::cert::{self, CertSummary};
use super::context::{Context, Facts};
use super::report::CheckResult;
use super::report::{format_duration, millis};
use crate::dify::DifyError;
use crate::dify::client::BaseAnswer;
use crate::finding::Finding;
use crate::secret::mask_url_credentials;

pub(crate) const ID: &str = "ping-dify";

#[derive(Debug, Clone)]
pub struct PingOptions {
    /// Another DNS server to compare the system's answer with.
    pub(crate) dns: Option<SocketAddr>,
    /// Rounds of TCP connect and HTTP request.
    pub count: u32,
}

impl Default for PingOptions {
    fn default() -> Self {
        PingOptions { dns: None, count: 1 }
    }
}

#[derive(Debug, Serialize)]
struct Details {
    base: String,
    scheme: String,
    host: String,
    port: u16,
    proxy: Proxy,
    dns: Vec<DnsAnswer>,
    tcp: Vec<TcpStats>,
    tls: Option<TlsState>,
    http: HttpStats,
    /// The first layer that failed: `dns`, `tcp`, `tls` or `http`.
    failed_layer: Option<&'static str>,
    reachable: bool,
}

#[derive(Debug, Default, Serialize)]
struct Proxy {
    /// Proxy variables set in the environment (credentials masked).
    variables: Vec<EnvVar>,
    /// The proxy that requests to DIFY_API_BASE go through, if any.
    used: Option<String>,
}

#[derive(Debug, Serialize)]
struct EnvVar {
    name: &'static str,
    value: String,
}

#[derive(Debug, Serialize)]
struct DnsAnswer {
    /// `system` or `--dns`.
    resolver: &'static str,
    servers: Vec<String>,
    addresses: Vec<String>,
    ms: Option<f64>,
    error: Option<String>,
    #[serde(skip)]
    kind: DnsFailure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DnsFailure {
    None,
    NoSuchHost,
    Timeout,
    Other,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Stats {
    sent: u32,
    received: u32,
    loss_pct: f64,
    min_ms: Option<f64>,
    avg_ms: Option<f64>,
    max_ms: Option<f64>,
}

impl Stats {
    fn from(times: &[Duration], sent: u32) -> Stats {
        let received = u32::try_from(times.len()).unwrap_or(u32::MAX);
        let ms: Vec<f64> = times.iter().map(|t| millis(*t)).collect();
        let avg = (!ms.is_empty()).then(|| (ms.iter().sum::<f64>() / ms.len() as f64 * 10.0).round() / 10.0);
        Stats {
            sent,
            received,
            loss_pct: if sent == 0 {
                0.0
            } else {
                (f64::from(sent - received) * 1000.0 / f64::from(sent)).round() / 10.0
            },
            min_ms: ms.iter().copied().reduce(f64::min),
            avg_ms: avg,
            max_ms: ms.iter().copied().reduce(f64::max),
        }
    }

    fn text(&self) -> String {
        match (self.min_ms, self.avg_ms, self.max_ms) {
            (Some(min), Some(avg), Some(max)) if self.sent > 1 => {
                format!("min/avg/max {min}/{avg}/{max} ms, {}% loss", self.loss_pct)
            }
            (_, Some(avg), _) => format!("{avg} ms"),
            _ => format!("{}% loss", self.loss_pct),
        }
    }
}

#[derive(Debug, Serialize)]
struct TcpStats {
    address: String,
    #[serde(flatten)]
    stats: Stats,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct TlsState {
    version: Option<&'static str>,
    certificate: Option<CertSummary>,
    days_left: Option<i64>,
    error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct HttpStats {
    status: Option<u16>,
    #[serde(flatten)]
    stats: Stats,
    error: Option<String>,
}

pub(crate) async fn run(ctx: &Context, options: &PingOptions, facts: &mut Facts) -> CheckResult {
    let config = match ctx.require_config(ID) {
        Ok(config) => config,
        Err(result) => return *result,
    };
    let mut result = CheckResult::new(ID);
    let base = config.dify_api_base.clone();
    let url = match Url::parse(&base) {
        Ok(url) => url,
        Err(e) => {
            result.summary("DIFY_API_BASE is not a URL");
            result.fail(Finding::new(format!("DIFY_API_BASE {base:?} cannot be parsed: {e}")));
            return result;
        }
    };
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let https = url.scheme() == "https";
    let count = options.count.max(1);
    let timeout = ctx.step_timeout;
    let mut details = Details {
        base: base.clone(),
        scheme: url.scheme().to_string(),
        host: host.clone(),
        port,
        proxy: proxy_for(&url),
        dns: Vec::new(),
        tcp: Vec::new(),
        tls: None,
        http: HttpStats::default(),
        failed_layer: None,
        reachable: false,
    };
    let proxied = details.proxy.used.is_some();
    result.line(format!("base: {base}"));
    for var in &details.proxy.variables {
        result.line(format!("proxy variable: {}={}", var.name, var.value));
    }
    if let Some(proxy) = &details.proxy.used {
        result.line(format!("requests to Dify go through the proxy {proxy}; DNS and TCP below are direct"));
    }

    // DNS
    ctx.progress.set(format!("{ID}: resolving {host}…"));
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => {
            result.line(format!("dns: {host} is an IP address, nothing to resolve"));
            vec![ip]
        }
        Err(_) => {
            let system = resolve_system(&host, timeout).await;
            result.line(dns_line(&system));
            let ips: Vec<IpAddr> = system.addresses.iter().filter_map(|a| a.parse().ok()).collect();
            details.dns.push(system);
            if let Some(server) = options.dns {
                let other = resolve_with(&host, server, timeout).await;
                result.line(dns_line(&other));
                details.dns.push(other);
            }
            ips
        }
    };
    if let Some(system) = details.dns.first().filter(|d| d.error.is_some()) {
        let compare = details.dns.get(1);
        let (reason, fix) = dns_failure(&host, system, compare);
        if proxied {
            result.warn(Finding::with_fix(
                format!("{reason} (requests go through the proxy, which resolves on its side)"),
                fix,
            ));
        } else {
            details.failed_layer = Some("dns");
            result.network_fail(Finding::with_fix(reason, fix));
        }
    } else if let (Some(system), Some(other)) = (details.dns.first(), details.dns.get(1)) {
        if other.error.is_some() {
            result.warn(Finding::with_fix(
                format!(
                    "the DNS server {} cannot resolve {host} ({}), the system resolver can",
                    other.servers.join(", "),
                    other.error.as_deref().unwrap_or("")
                ),
                "nothing to fix for opendify; do not use that server in Docker's `dns:` setting",
            ));
        } else if sorted(&system.addresses) != sorted(&other.addresses) {
            result.line(format!(
                "note: the resolvers disagree ({} vs {}); normal for CDNs, suspicious for a private Dify",
                system.addresses.join(", "),
                other.addresses.join(", ")
            ));
        }
    }

    // TCP, then TLS and HTTP, `count` rounds.
    let dns_failed = details.failed_layer.is_some();
    let targets: Vec<SocketAddr> = addresses.iter().take(4).map(|ip| SocketAddr::new(*ip, port)).collect();
    let mut tcp_times: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
    let mut tcp_errors: Vec<Option<String>> = vec![None; targets.len()];
    let mut http_times = Vec::new();
    let mut http_answer: Option<BaseAnswer> = None;
    let mut http_error: Option<DifyError> = None;
    let client = if dns_failed {
        None
    } else {
        match ctx.client(config) {
            Ok(client) => Some(client),
            Err(e) => {
                result.fail(Finding::new(format!("cannot build the Dify client: {e}")));
                None
            }
        }
    };
    for round in 0..if dns_failed { 0 } else { count } {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (i, target) in targets.iter().enumerate() {
            ctx.progress.set(format!("{ID}: connecting to {target} ({}/{count})…", round + 1));
            match tcp_connect(*target, timeout).await {
                Ok(took) => tcp_times[i].push(took),
                Err(e) => tcp_errors[i] = Some(e),
            }
        }
        if let Some(client) = &client {
            ctx.progress.set(format!("{ID}: GET {base} ({}/{count})…", round + 1));
            let started = Instant::now();
            match client.probe_base().await {
                Ok(answer) => {
                    http_times.push(started.elapsed());
                    http_answer.get_or_insert(answer);
                }
                Err(e) => http_error = Some(e),
            }
        }
    }
    let sent = if dns_failed { 0 } else { count };
    for (i, target) in targets.iter().enumerate() {
        let stats = Stats::from(&tcp_times[i], sent);
        result.line(format!(
            "tcp {target}: {}",
            match &tcp_errors[i] {
                Some(e) if stats.received == 0 => e.clone(),
                Some(e) => format!("{} (failures: {e})", stats.text()),
                None => stats.text(),
            }
        ));
        details.tcp.push(TcpStats { address: target.to_string(), stats, error: tcp_errors[i].clone() });
    }
    let tcp_ok = details.tcp.iter().filter(|t| t.stats.received > 0).count();
    if !dns_failed && !details.tcp.is_empty() {
        if tcp_ok == 0 {
            let error = details.tcp[0].error.clone().unwrap_or_default();
            let (reason, fix) = tcp_failure(&host, port, &url, &error);
            if proxied {
                result.warn(Finding::with_fix(format!("{reason} (requests go through the proxy)"), fix));
            } else {
                details.failed_layer.get_or_insert("tcp");
                result.network_fail(Finding::with_fix(reason, fix));
            }
        } else if tcp_ok < details.tcp.len() {
            let bad: Vec<&str> =
                details.tcp.iter().filter(|t| t.stats.received == 0).map(|t| t.address.as_str()).collect();
            result.warn(Finding::with_fix(
                format!("{} of {} addresses cannot be reached: {}", bad.len(), details.tcp.len(), bad.join(", ")),
                "usually IPv6 without a route: harmless while another address works; otherwise check the firewall",
            ));
        } else if details.tcp.iter().any(|t| t.stats.loss_pct > 0.0) {
            result.warn(Finding::with_fix(
                "some TCP connections failed (packet loss)",
                "check the network path to Dify (Wi-Fi, VPN, firewall)",
            ));
        }
    }

    // TLS and HTTP.
    details.http = HttpStats {
        status: http_answer.as_ref().map(|a| a.status),
        stats: Stats::from(&http_times, if client.is_some() { sent } else { 0 }),
        error: http_error.as_ref().map(|e| e.to_string()),
    };
    if https {
        details.tls = Some(tls_state(http_answer.as_ref(), http_error.as_ref()));
    }
    let tcp_blocked = details.failed_layer.is_some();
    match (&http_answer, &http_error) {
        (Some(answer), _) => {
            details.reachable = true;
            if let Some(tls) = &details.tls {
                result.line(tls_line(tls));
                if let Some(days) = tls.days_left.filter(|d| *d < 14) {
                    result.warn(Finding::with_fix(
                        format!("the certificate of {host} expires in {days} days"),
                        "renew the certificate of the Dify server (certbot renew, or your CA)",
                    ));
                }
            } else {
                result.line("tls: not used (http://)");
            }
            result.line(format!("http: GET {base} answered {} ({})", answer.status, details.http.stats.text()));
            if !https && answer.status == 400 {
                result.warn(Finding::with_fix(
                    format!("{base} answered 400 to plain HTTP"),
                    format!("if this port speaks HTTPS, use DIFY_API_BASE={}", base.replacen("http://", "https://", 1)),
                ));
            }
            if details.http.stats.received < details.http.stats.sent {
                result.warn(Finding::with_fix(
                    format!("{}% of the HTTP requests to Dify failed", details.http.stats.loss_pct),
                    "an unstable network path or an overloaded Dify: compare with `--count 20`",
                ));
            }
        }
        (None, Some(error)) if !tcp_blocked => {
            let (layer, reason, fix) = http_failure(error, &url, https);
            if layer == "tls"
                && let Some(tls) = &details.tls
            {
                result.line(tls_line(tls));
            }
            if layer == "tls" {
                result.line("http: not reached (the TLS handshake failed)");
            } else {
                result.line(format!("http: {error}"));
            }
            details.failed_layer.get_or_insert(layer);
            result.network_fail(Finding::with_fix(reason, fix));
        }
        _ => {}
    }

    result.summary(summary(&details, &host));
    facts.dify_unreachable = !details.reachable;
    result.details(details);
    result
}

fn summary(details: &Details, host: &str) -> String {
    let mut parts = Vec::new();
    if let Some(dns) = details.dns.first() {
        match (&dns.error, dns.ms) {
            (None, Some(ms)) => parts.push(format!(
                "{host} → {} address{} in {ms} ms",
                dns.addresses.len(),
                if dns.addresses.len() == 1 { "" } else { "es" }
            )),
            _ => parts.push(format!("{host} does not resolve")),
        }
    }
    if details.dns.is_empty() {
        parts.push(format!("{host}:{}", details.port));
    }
    if let Some(tcp) = details.tcp.iter().find(|t| t.stats.received > 0) {
        parts.push(format!("TCP {} ms", tcp.stats.avg_ms.unwrap_or_default()));
    } else if let Some(tcp) = details.tcp.first() {
        parts.push(format!("TCP failed ({})", tcp.error.as_deref().unwrap_or("no connection")));
    }
    if let Some(tls) = &details.tls {
        if tls.certificate.is_some() || tls.version.is_some() {
            let version = tls.version.unwrap_or("TLS");
            parts.push(match tls.days_left {
                Some(days) => format!("{version} ({days} days left)"),
                None => version.to_string(),
            });
        } else if tls.error.is_some() {
            parts.push("TLS failed".into());
        }
    }
    match (details.http.status, &details.http.error) {
        (Some(status), _) => {
            parts.push(format!("HTTP {status} in {} ms", details.http.stats.avg_ms.unwrap_or_default()))
        }
        (None, Some(_)) if details.failed_layer == Some("http") => parts.push("HTTP failed".into()),
        _ => {}
    }
    if parts.is_empty() { details.base.clone() } else { parts.join(", ") }
}

fn sorted(list: &[String]) -> Vec<String> {
    let mut list = list.to_vec();
    list.sort();
    list
}

fn dns_line(answer: &DnsAnswer) -> String {
    let servers = if answer.servers.is_empty() { String::new() } else { format!(" ({})", answer.servers.join(", ")) };
    match (&answer.error, answer.ms) {
        (Some(e), _) => format!("dns via {}{servers}: {e}", answer.resolver),
        (None, ms) => format!(
            "dns via {}{servers}: {} in {} ms",
            answer.resolver,
            answer.addresses.join(", "),
            ms.unwrap_or_default()
        ),
    }
}

/// Resolves like the system does (resolv.conf, hosts file).
async fn resolve_system(host: &str, timeout: Duration) -> DnsAnswer {
    let (config, mut opts) = match hickory_resolver::system_conf::read_system_conf() {
        Ok(conf) => conf,
        Err(e) => {
            return DnsAnswer {
                resolver: "system",
                servers: Vec::new(),
                addresses: Vec::new(),
                ms: None,
                error: Some(format!("cannot read the system resolver configuration: {e}")),
                kind: DnsFailure::Other,
            };
        }
    };
    let servers = config.name_servers().iter().map(|ns| ns.ip.to_string()).collect();
    // Each query gets half the step: a second server or TCP retry still fits in it.
    opts.timeout = opts.timeout.min(timeout / 2).max(Duration::from_millis(500));
    let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default()).with_options(opts).build();
    lookup("system", servers, resolver, host, timeout).await
}

/// Resolves with one given server only (no hosts file), for comparison.
async fn resolve_with(host: &str, server: SocketAddr, timeout: Duration) -> DnsAnswer {
    let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut name_server.connections {
        connection.port = server.port();
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = (timeout / 2).max(Duration::from_millis(500));
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Never;
    let resolver = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![name_server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build();
    lookup("--dns", vec![server.to_string()], resolver, host, timeout).await
}

async fn lookup(
    resolver: &'static str,
    servers: Vec<String>,
    built: Result<TokioResolver, NetError>,
    host: &str,
    timeout: Duration,
) -> DnsAnswer {
    let mut answer =
        DnsAnswer { resolver, servers, addresses: Vec::new(), ms: None, error: None, kind: DnsFailure::None };
    let resolver = match built {
        Ok(r) => r,
        Err(e) => {
            answer.error = Some(format!("cannot set up the resolver: {e}"));
            answer.kind = DnsFailure::Other;
            return answer;
        }
    };
    let started = Instant::now();
    match tokio::time::timeout(timeout, resolver.lookup_ip(host)).await {
        Ok(Ok(found)) => {
            answer.ms = Some(millis(started.elapsed()));
            answer.addresses = found.iter().map(|ip| ip.to_string()).collect();
            if answer.addresses.is_empty() {
                answer.error = Some("no addresses".into());
                answer.kind = DnsFailure::NoSuchHost;
            }
        }
        Ok(Err(e)) => {
            let (text, kind) = if e.is_nx_domain() {
                (format!("no such host: {host} (NXDOMAIN)"), DnsFailure::NoSuchHost)
            } else if e.is_no_records_found() {
                (format!("{host} has no A/AAAA records"), DnsFailure::NoSuchHost)
            } else if matches!(e, NetError::Timeout) {
                (format!("no DNS answer within {}", format_duration(timeout)), DnsFailure::Timeout)
            } else {
                (e.to_string(), DnsFailure::Other)
            };
            answer.error = Some(text);
            answer.kind = kind;
        }
        Err(_) => {
            answer.error = Some(format!("no DNS answer within {}", format_duration(timeout)));
            answer.kind = DnsFailure::Timeout;
        }
    }
    answer
}

fn dns_failure(host: &str, system: &DnsAnswer, compare: Option<&DnsAnswer>) -> (String, String) {
    let error = system.error.as_deref().unwrap_or("failed");
    let reason = format!("DNS: the system resolver cannot resolve {host}: {error}");
    if let Some(other) = compare.filter(|o| o.error.is_none()) {
        let server = other.servers.first().cloned().unwrap_or_default();
        let ip = server.rsplit_once(':').map(|(ip, _)| ip.trim_matches(['[', ']'])).unwrap_or(&server).to_string();
        return (
            reason,
            format!(
                "{server} resolves it: in Docker add `dns: [\"{ip}\"]` to the service in docker-compose.yml (or `--dns {ip}` to docker run); on a host, fix the nameserver lines in /etc/resolv.conf"
            ),
        );
    }
    let fix = match system.kind {
        DnsFailure::NoSuchHost => format!(
            "check the host name in DIFY_API_BASE for typos; `nslookup {host}` should find it (a private Dify needs a DNS entry or an /etc/hosts line)"
        ),
        DnsFailure::Timeout => format!(
            "no DNS server answered (nameservers: {}): check /etc/resolv.conf; in Docker add `dns: [\"8.8.8.8\"]` to the service in docker-compose.yml; compare with `opendify doctor ping-dify --dns 8.8.8.8`",
            if system.servers.is_empty() { "none".into() } else { system.servers.join(", ") }
        ),
        _ => "check /etc/resolv.conf; compare with `opendify doctor ping-dify --dns 8.8.8.8`".to_string(),
    };
    (reason, fix)
}

async fn tcp_connect(target: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(stream)) => {
            let took = started.elapsed();
            drop(stream);
            Ok(took)
        }
        Ok(Err(e)) => Err(match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            _ => e.to_string(),
        }),
        Err(_) => Err(format!("no answer within {} (timeout)", format_duration(timeout))),
    }
}

fn tcp_failure(host: &str, port: u16, url: &Url, error: &str) -> (String, String) {
    let reason = format!("TCP: cannot connect to {host}:{port}: {error}");
    let explicit_port = url.port().is_some();
    let fix = if error.contains("refused") {
        let scheme_hint = match (url.scheme(), explicit_port) {
            ("https", false) => {
                " (https:// without a port means 443; a plain-HTTP Dify usually listens on 80: use http://)"
            }
            ("http", false) => " (http:// without a port means 80)",
            _ => "",
        };
        format!(
            "nothing listens on {host}:{port}: is Dify running (`docker compose ps` in Dify's docker folder), and is the port in DIFY_API_BASE right{scheme_hint}?"
        )
    } else if error.contains("timeout") || error.contains("timed out") {
        format!(
            "packets to {host}:{port} are dropped: check firewalls and security groups; from a container, the host is not `localhost` (use host.docker.internal or the service name)"
        )
    } else if error.contains("unreachable") {
        "no route to the host: check the network (VPN, Docker network, IPv6 without a route)".to_string()
    } else {
        format!("check that {host}:{port} is reachable from this machine (`nc -vz {host} {port}`)")
    };
    (reason, fix)
}

fn tls_state(answer: Option<&BaseAnswer>, error: Option<&DifyError>) -> TlsState {
    let mut state = TlsState { version: None, certificate: None, days_left: None, error: None };
    if let Some(answer) = answer {
        state.version = answer.tls_version;
        if let Some(der) = &answer.peer_certificate {
            match cert::summarize(der) {
                Ok(summary) => {
                    state.days_left = Some(summary.days_left(now_unix()));
                    state.certificate = Some(summary);
                }
                Err(e) => state.error = Some(e.to_string()),
            }
        }
    } else if let Some(error) = error.filter(|e| is_tls_error(e)) {
        state.error = Some(error.to_string());
    }
    state
}

fn tls_line(tls: &TlsState) -> String {
    match (&tls.certificate, &tls.error) {
        (Some(cert), _) => format!(
            "tls: {}, certificate {} (issuer {}), valid until {} ({} days left)",
            tls.version.unwrap_or("TLS"),
            cert.subject,
            cert.issuer,
            cert.not_after,
            tls.days_left.unwrap_or_default()
        ),
        (None, Some(error)) => format!("tls: {error}"),
        (None, None) => format!("tls: {}", tls.version.unwrap_or("established")),
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whether a failed request broke in the TLS handshake (rustls's messages, via reqwest).
fn is_tls_error(error: &DifyError) -> bool {
    let DifyError::Connect { reason, .. } = error else { return false };
    let text = reason.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "corrupt message", "invalidcontenttype", "alert", "ssl"]
        .iter()
        .any(|needle| text.contains(needle))
}

/// The layer a failed HTTP probe broke in, why, and what to do.
fn http_failure(error: &DifyError, url: &Url, https: bool) -> (&'static str, String, String) {
    let host = url.host_str().unwrap_or_default();
    if https && is_tls_error(error) {
        let text = error.to_string();
        let lower = text.to_ascii_lowercase();
        let fix = if lower.contains("corrupt message")
            || lower.contains("invalidcontenttype")
            || lower.contains("wrong version")
        {
            format!(
                "the server at {host} speaks plain HTTP on this port: use DIFY_API_BASE={}",
                url.as_str().trim_end_matches('/').replacen("https://", "http://", 1)
            )
        } else if lower.contains("unknownissuer")
            || lower.contains("unknown issuer")
            || lower.contains("self-signed")
            || lower.contains("self signed")
        {
            "the certificate is not signed by a CA this machine trusts: use a certificate from a public CA (e.g. Let's Encrypt), or add your CA to the system trust store (update-ca-certificates)".to_string()
        } else if lower.contains("notvalidforname") || lower.contains("not valid for") {
            format!(
                "the certificate does not name {host}: use the host name it was issued for in DIFY_API_BASE, or reissue it"
            )
        } else if lower.contains("expired") {
            format!("the certificate of {host} has expired: renew it on the Dify server (certbot renew)")
        } else {
            "check the TLS setup of the Dify server (certificate chain, protocol versions)".to_string()
        };
        return ("tls", format!("TLS: the handshake with {host} failed: {error}"), fix);
    }
    match error {
        DifyError::Timeout(limit) => (
            "http",
            format!("HTTP: {host} accepted the connection but did not answer within {}", format_duration(*limit)),
            "Dify (or a reverse proxy in front of it) hangs: check `docker compose ps` / the api container logs; raise --timeout to wait longer".into(),
        ),
        DifyError::Connect { reason, .. } => (
            "tcp",
            format!("the Dify client cannot connect to {}: {reason}", mask_url_credentials(url.as_str())),
            if reason.to_ascii_lowercase().contains("proxy") {
                "the proxy from HTTPS_PROXY/HTTP_PROXY refuses or fails: check it, or exempt Dify with NO_PROXY".into()
            } else {
                "check that Dify is running and reachable from this machine; see the TCP lines above".into()
            },
        ),
        other => (
            "http",
            format!("HTTP: {other}"),
            "check DIFY_API_BASE (it should be Dify's service API, ending in /v1)".into(),
        ),
    }
}

/// The proxy variables set, and the proxy requests to `url` go through (reqwest reads the
/// same variables).
fn proxy_for(url: &Url) -> Proxy {
    const NAMES: [&str; 8] =
        ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"];
    let mut proxy = Proxy::default();
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    for name in NAMES {
        if let Some(value) = get(name) {
            proxy.variables.push(EnvVar { name, value: mask_url_credentials(&value) });
        }
    }
    let candidates: &[&str] = if url.scheme() == "https" {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    let Some(chosen) = candidates.iter().find_map(|name| get(name)) else { return proxy };
    let no_proxy = get("NO_PROXY").or_else(|| get("no_proxy")).unwrap_or_default();
    if !no_proxy_matches(url.host_str().unwrap_or_default(), &no_proxy) {
        proxy.used = Some(mask_url_credentials(&chosen));
    }
    proxy
}

/// NO_PROXY as curl and reqwest read it: `*`, exact hosts, and domain suffixes.
fn no_proxy_matches(host: &str, no_proxy: &str) -> bool {
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    no_proxy.split(',').map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
        }
        let domain = entry.trim_start_matches("*.").trim_start_matches('.');
        host == domain || host.ends_with(&format!(".{domain}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_matches_hosts_and_suffixes() {
        assert!(no_proxy_matches("dify.internal", "localhost, .internal"));
        assert!(no_proxy_matches("api.dify.ai", "dify.ai"));
        assert!(no_proxy_matches("anything", "*"));
        assert!(no_proxy_matches("[::1]", "::1"));
        assert!(!no_proxy_matches("notdify.ai", "dify.ai"));
        assert!(!no_proxy_matches("api.dify.ai", ""));
    }

    #[test]
    fn stats_are_like_ping() {
        let times = [Duration::from_millis(10), Duration::from_millis(30)];
        let stats = Stats::from(&times, 4);
        assert_eq!((stats.sent, stats.received, stats.loss_pct), (4, 2, 50.0));
        assert_eq!((stats.min_ms, stats.avg_ms, stats.max_ms), (Some(10.0), Some(20.0), Some(30.0)));
        assert_eq!(stats.text(), "min/avg/max 10/20/30 ms, 50% loss");
        assert_eq!(Stats::from(&[], 0).loss_pct, 0.0);
    }

    #[test]
    fn tls_failures_name_the_likely_cause() {
        let url = Url::parse("https://dify.example.com/v1").expect("url");
        let plain = DifyError::Connect {
            url: url.to_string(),
            reason:
                "error sending request: client error (Connect): received corrupt message of type InvalidContentType"
                    .into(),
        };
        let (layer, _, fix) = http_failure(&plain, &url, true);
        assert_eq!(layer, "tls");
        assert!(fix.contains("DIFY_API_BASE=http://dify.example.com/v1"), "{fix}");
        let untrusted =
            DifyError::Connect { url: url.to_string(), reason: "invalid peer certificate: UnknownIssuer".into() };
        assert!(http_failure(&untrusted, &url, true).2.contains("trust store"));
        let refused = DifyError::Connect { url: url.to_string(), reason: "Connection refused (os error 111)".into() };
        assert_eq!(http_failure(&refused, &url, true).0, "tcp");
    }
}

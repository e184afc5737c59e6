//! `ping-dify` (the guide's problems 4 and 11: timeouts, container DNS): what the guide did
//! with nslookup, telnet and curl, layer by layer, so a failure names its layer and the fix
//! for that layer. DNS with hickory-resolver on the system's configuration (and `--dns` to
//! compare with another server), TCP connect per address, then TLS and HTTP through the Dify
//! client `serve` uses (same timeouts, proxies and trust roots). Any HTTP answer means
//! reachable: Dify's base URL itself answers 404. Each layer is measured into a typed
//! report, then judged in order; the first that fails is `details.failed_layer`.

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
use super::report::{CheckResult, format_duration, millis};
use crate::config::Config;
use crate::dify::client::BaseAnswer;
use crate::dify::{DifyClient, DifyError};
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
    failed_layer: Option<Layer>,
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

/// The layer a failure is in, named in `details.failed_layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Layer {
    Dns,
    Tcp,
    Tls,
    Http,
}

/// Where DIFY_API_BASE points, as the layers need it.
struct Target {
    url: Url,
    /// DIFY_API_BASE as configured.
    base: String,
    host: String,
    port: u16,
    https: bool,
}

impl Target {
    /// The URL, or why it is not one.
    fn parse(base: &str) -> Result<Target, String> {
        let url = Url::parse(base).map_err(|e| e.to_string())?;
        Ok(Target {
            host: url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string(),
            port: url.port_or_known_default().unwrap_or(80),
            https: url.scheme() == "https",
            base: base.to_string(),
            url,
        })
    }
}

/// The DNS layer: what each resolver answered (none for an IP address), and the addresses
/// to connect to.
struct DnsLayer {
    answers: Vec<DnsAnswer>,
    addresses: Vec<IpAddr>,
}

/// The HTTP layer (TLS happens inside it): GETs of the base URL through serve's client.
#[derive(Default)]
struct HttpLayer {
    sent: u32,
    times: Vec<Duration>,
    /// The first answer.
    answer: Option<BaseAnswer>,
    /// The last error.
    error: Option<DifyError>,
}

/// TCP connects to one address, round after round.
struct TcpProbe {
    address: SocketAddr,
    times: Vec<Duration>,
    /// The last error.
    error: Option<String>,
}

/// DNS, then TCP, TLS and HTTP: each layer is measured into a typed report, then judged
/// in turn; the first layer that fails is named, with the fix for that layer.
pub(crate) async fn run(ctx: &Context, options: &PingOptions, facts: &mut Facts) -> CheckResult {
    let config = match ctx.require_config(ID) {
        Ok(config) => config,
        Err(result) => return *result,
    };
    let target = match Target::parse(&config.dify_api_base) {
        Ok(target) => target,
        Err(e) => {
            let mut result = CheckResult::new(ID);
            result.summary("DIFY_API_BASE is not a URL");
            result.fail(Finding::new(format!("DIFY_API_BASE {:?} cannot be parsed: {e}", config.dify_api_base)));
            return result;
        }
    };
    let mut ping = Ping::start(target);
    let dns = resolve(ctx, &ping.target.host, options.dns).await;
    let addresses = ping.judge_dns(dns);
    let dns_failed = ping.details.failed_layer.is_some();
    let client = if dns_failed { None } else { ping.client(ctx, config) };
    let count = if dns_failed { 0 } else { options.count.max(1) };
    let (tcp, http) = rounds(ctx, &ping.target, &addresses, client.as_ref(), count).await;
    ping.judge_tcp(tcp);
    ping.judge_tls_and_http(http);
    facts.dify_unreachable = !ping.details.reachable;
    ping.finish()
}

/// DNS: the system resolver (and `--dns` to compare); an IP address needs none.
async fn resolve(ctx: &Context, host: &str, compare: Option<SocketAddr>) -> DnsLayer {
    ctx.progress.set(format!("{ID}: resolving {host}…"));
    if let Ok(ip) = host.parse::<IpAddr>() {
        return DnsLayer { answers: Vec::new(), addresses: vec![ip] };
    }
    let system = resolve_system(host, ctx.step_timeout).await;
    let addresses = system.addresses.iter().filter_map(|a| a.parse().ok()).collect();
    let mut answers = vec![system];
    if let Some(server) = compare {
        answers.push(resolve_with(host, server, ctx.step_timeout).await);
    }
    DnsLayer { answers, addresses }
}

/// TCP and HTTP, `count` rounds 200 ms apart: each round connects to every address (at
/// most four), then sends one GET through serve's client, whose TLS handshake gives the
/// TLS layer. Interleaved, so both layers are sampled over the same stretch of time.
async fn rounds(
    ctx: &Context,
    target: &Target,
    addresses: &[IpAddr],
    client: Option<&DifyClient>,
    count: u32,
) -> (Vec<TcpStats>, HttpLayer) {
    let mut tcp: Vec<TcpProbe> = addresses
        .iter()
        .take(4)
        .map(|ip| TcpProbe { address: SocketAddr::new(*ip, target.port), times: Vec::new(), error: None })
        .collect();
    let mut http = HttpLayer { sent: if client.is_some() { count } else { 0 }, ..HttpLayer::default() };
    for round in 1..=count {
        if round > 1 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for probe in &mut tcp {
            ctx.progress.set(format!("{ID}: connecting to {} ({round}/{count})…", probe.address));
            match tcp_connect(probe.address, ctx.step_timeout).await {
                Ok(took) => probe.times.push(took),
                Err(e) => probe.error = Some(e),
            }
        }
        if let Some(client) = client {
            ctx.progress.set(format!("{ID}: GET {} ({round}/{count})…", target.base));
            let started = Instant::now();
            match client.probe_base().await {
                Ok(answer) => {
                    http.times.push(started.elapsed());
                    http.answer.get_or_insert(answer);
                }
                Err(e) => http.error = Some(e),
            }
        }
    }
    let tcp = tcp
        .into_iter()
        .map(|probe| TcpStats {
            address: probe.address.to_string(),
            stats: Stats::from(&probe.times, count),
            error: probe.error,
        })
        .collect();
    (tcp, http)
}

/// One ping-dify run being judged, layer by layer: the result so far and its details.
struct Ping {
    target: Target,
    result: CheckResult,
    details: Details,
}

impl Ping {
    /// The base URL and the proxy variables, before any layer is measured.
    fn start(target: Target) -> Ping {
        let mut result = CheckResult::new(ID);
        let details = Details {
            base: target.base.clone(),
            scheme: target.url.scheme().to_string(),
            host: target.host.clone(),
            port: target.port,
            proxy: proxy_for(&target.url),
            dns: Vec::new(),
            tcp: Vec::new(),
            tls: None,
            http: HttpStats::default(),
            failed_layer: None,
            reachable: false,
        };
        result.line(format!("base: {}", target.base));
        for var in &details.proxy.variables {
            result.line(format!("proxy variable: {}={}", var.name, var.value));
        }
        if let Some(proxy) = &details.proxy.used {
            result.line(format!("requests to Dify go through the proxy {proxy}; DNS and TCP below are direct"));
        }
        Ping { target, result, details }
    }

    /// Requests to Dify go through a proxy: DNS and TCP failures here are only warnings.
    fn proxied(&self) -> bool {
        self.details.proxy.used.is_some()
    }

    /// The Dify client serve would use, or a failure saying why there is none.
    fn client(&mut self, ctx: &Context, config: &Config) -> Option<DifyClient> {
        match ctx.client(config) {
            Ok(client) => Some(client),
            Err(e) => {
                self.result.fail(Finding::new(format!("cannot build the Dify client: {e}")));
                None
            }
        }
    }

    /// The DNS lines and problems; returns the addresses to connect to.
    fn judge_dns(&mut self, dns: DnsLayer) -> Vec<IpAddr> {
        let host = &self.target.host;
        if dns.answers.is_empty() {
            self.result.line(format!("dns: {host} is an IP address, nothing to resolve"));
        }
        for answer in &dns.answers {
            self.result.line(dns_line(answer));
        }
        match dns.answers.as_slice() {
            [system, ..] if system.error.is_some() => {
                let mut finding = dns_failure(host, system, dns.answers.get(1));
                if self.proxied() {
                    finding.message.push_str(" (requests go through the proxy, which resolves on its side)");
                    self.result.warn(finding);
                } else {
                    self.details.failed_layer = Some(Layer::Dns);
                    self.result.network_fail(finding);
                }
            }
            [_, other] if other.error.is_some() => {
                self.result.warn(Finding::with_fix(
                    format!(
                        "the DNS server {} cannot resolve {host} ({}), the system resolver can",
                        other.servers.join(", "),
                        other.error.as_deref().unwrap_or("")
                    ),
                    "nothing to fix for opendify; do not use that server in Docker's `dns:` setting",
                ));
            }
            [system, other] if sorted(&system.addresses) != sorted(&other.addresses) => {
                self.result.line(format!(
                    "note: the resolvers disagree ({} vs {}); normal for CDNs, suspicious for a private Dify",
                    system.addresses.join(", "),
                    other.addresses.join(", ")
                ));
            }
            _ => {}
        }
        self.details.dns = dns.answers;
        dns.addresses
    }

    /// A line per address; a failure when none can be connected to.
    fn judge_tcp(&mut self, tcp: Vec<TcpStats>) {
        for t in &tcp {
            let text = match &t.error {
                Some(e) if t.stats.received == 0 => e.clone(),
                Some(e) => format!("{} (failures: {e})", t.stats.text()),
                None => t.stats.text(),
            };
            self.result.line(format!("tcp {}: {text}", t.address));
        }
        self.details.tcp = tcp;
        let tcp = &self.details.tcp;
        if self.details.failed_layer.is_some() || tcp.is_empty() {
            return;
        }
        let reached = tcp.iter().filter(|t| t.stats.received > 0).count();
        if reached == 0 {
            let error = tcp[0].error.clone().unwrap_or_default();
            let mut finding = tcp_failure(&self.target, &error);
            if self.proxied() {
                finding.message.push_str(" (requests go through the proxy)");
                self.result.warn(finding);
            } else {
                self.details.failed_layer = Some(Layer::Tcp);
                self.result.network_fail(finding);
            }
        } else if reached < tcp.len() {
            let bad: Vec<&str> = tcp.iter().filter(|t| t.stats.received == 0).map(|t| t.address.as_str()).collect();
            self.result.warn(Finding::with_fix(
                format!("{} of {} addresses cannot be reached: {}", bad.len(), tcp.len(), bad.join(", ")),
                "usually IPv6 without a route: harmless while another address works; otherwise check the firewall",
            ));
        } else if tcp.iter().any(|t| t.stats.loss_pct > 0.0) {
            self.result.warn(Finding::with_fix(
                "some TCP connections failed (packet loss)",
                "check the network path to Dify (Wi-Fi, VPN, firewall)",
            ));
        }
    }

    /// TLS (https only) and HTTP, from the same requests: any answer means reachable.
    fn judge_tls_and_http(&mut self, http: HttpLayer) {
        self.details.http = HttpStats {
            status: http.answer.as_ref().map(|a| a.status),
            stats: Stats::from(&http.times, http.sent),
            error: http.error.as_ref().map(|e| e.to_string()),
        };
        if self.target.https {
            self.details.tls = Some(tls_state(http.answer.as_ref(), http.error.as_ref()));
        }
        match (&http.answer, &http.error) {
            (Some(answer), _) => {
                self.details.reachable = true;
                self.judge_tls();
                self.judge_answer(answer);
            }
            // A failure below HTTP was already named.
            (None, Some(error)) if self.details.failed_layer.is_none() => self.judge_http_failure(error),
            _ => {}
        }
    }

    /// The certificate of a TLS connection that worked.
    fn judge_tls(&mut self) {
        let Some(tls) = &self.details.tls else {
            self.result.line("tls: not used (http://)");
            return;
        };
        self.result.line(tls_line(tls));
        if let Some(days) = tls.days_left.filter(|d| *d < 14) {
            self.result.warn(Finding::with_fix(
                format!("the certificate of {} expires in {days} days", self.target.host),
                "renew the certificate of the Dify server (certbot renew, or your CA)",
            ));
        }
    }

    /// An HTTP answer: the status, and what it hints at.
    fn judge_answer(&mut self, answer: &BaseAnswer) {
        let (base, stats) = (&self.target.base, &self.details.http.stats);
        self.result.line(format!("http: GET {base} answered {} ({})", answer.status, stats.text()));
        if !self.target.https && answer.status == 400 {
            self.result.warn(Finding::with_fix(
                format!("{base} answered 400 to plain HTTP"),
                format!("if this port speaks HTTPS, use DIFY_API_BASE={}", base.replacen("http://", "https://", 1)),
            ));
        }
        if stats.received < stats.sent {
            self.result.warn(Finding::with_fix(
                format!("{}% of the HTTP requests to Dify failed", stats.loss_pct),
                "an unstable network path or an overloaded Dify: compare with `--count 20`",
            ));
        }
    }

    /// No answer at all: the handshake or the request failed.
    fn judge_http_failure(&mut self, error: &DifyError) {
        let (layer, finding) = http_failure(error, &self.target.url, self.target.https);
        if layer == Layer::Tls {
            if let Some(tls) = &self.details.tls {
                self.result.line(tls_line(tls));
            }
            self.result.line("http: not reached (the TLS handshake failed)");
        } else {
            self.result.line(format!("http: {error}"));
        }
        self.details.failed_layer = Some(layer);
        self.result.network_fail(finding);
    }

    fn finish(mut self) -> CheckResult {
        self.result.summary(summary(&self.details, &self.target.host));
        self.result.details(self.details);
        self.result
    }
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
        (None, Some(_)) if details.failed_layer == Some(Layer::Http) => parts.push("HTTP failed".into()),
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

fn dns_failure(host: &str, system: &DnsAnswer, compare: Option<&DnsAnswer>) -> Finding {
    let error = system.error.as_deref().unwrap_or("failed");
    let reason = format!("DNS: the system resolver cannot resolve {host}: {error}");
    if let Some(other) = compare.filter(|o| o.error.is_none()) {
        let server = other.servers.first().cloned().unwrap_or_default();
        let ip = server.rsplit_once(':').map(|(ip, _)| ip.trim_matches(['[', ']'])).unwrap_or(&server).to_string();
        return Finding::with_fix(
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
    Finding::with_fix(reason, fix)
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

fn tcp_failure(target: &Target, error: &str) -> Finding {
    let (host, port) = (&target.host, target.port);
    let reason = format!("TCP: cannot connect to {host}:{port}: {error}");
    let explicit_port = target.url.port().is_some();
    let fix = if error.contains("refused") {
        let scheme_hint = match (target.url.scheme(), explicit_port) {
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
    Finding::with_fix(reason, fix)
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
fn http_failure(error: &DifyError, url: &Url, https: bool) -> (Layer, Finding) {
    let host = url.host_str().unwrap_or_default();
    if https && is_tls_error(error) {
        let reason = format!("TLS: the handshake with {host} failed: {error}");
        return (Layer::Tls, Finding::with_fix(reason, tls_fix(error, url)));
    }
    match error {
        DifyError::Timeout(limit) => (
            Layer::Http,
            Finding::with_fix(
                format!("HTTP: {host} accepted the connection but did not answer within {}", format_duration(*limit)),
                "Dify (or a reverse proxy in front of it) hangs: check `docker compose ps` / the api container logs; raise --timeout to wait longer",
            ),
        ),
        DifyError::Connect { reason, .. } => (
            Layer::Tcp,
            Finding::with_fix(
                format!("the Dify client cannot connect to {}: {reason}", mask_url_credentials(url.as_str())),
                if reason.to_ascii_lowercase().contains("proxy") {
                    "the proxy from HTTPS_PROXY/HTTP_PROXY refuses or fails: check it, or exempt Dify with NO_PROXY"
                } else {
                    "check that Dify is running and reachable from this machine; see the TCP lines above"
                },
            ),
        ),
        other => (
            Layer::Http,
            Finding::with_fix(
                format!("HTTP: {other}"),
                "check DIFY_API_BASE (it should be Dify's service API, ending in /v1)",
            ),
        ),
    }
}

/// What to do about a failed TLS handshake, by rustls's words for it.
fn tls_fix(error: &DifyError, url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let lower = error.to_string().to_ascii_lowercase();
    let says = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if says(&["corrupt message", "invalidcontenttype", "wrong version"]) {
        format!(
            "the server at {host} speaks plain HTTP on this port: use DIFY_API_BASE={}",
            url.as_str().trim_end_matches('/').replacen("https://", "http://", 1)
        )
    } else if says(&["unknownissuer", "unknown issuer", "self-signed", "self signed"]) {
        "the certificate is not signed by a CA this machine trusts: use a certificate from a public CA (e.g. Let's Encrypt), or add your CA to the system trust store (update-ca-certificates)".to_string()
    } else if says(&["notvalidforname", "not valid for"]) {
        format!(
            "the certificate does not name {host}: use the host name it was issued for in DIFY_API_BASE, or reissue it"
        )
    } else if says(&["expired"]) {
        format!("the certificate of {host} has expired: renew it on the Dify server (certbot renew)")
    } else {
        "check the TLS setup of the Dify server (certificate chain, protocol versions)".to_string()
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
        let (layer, finding) = http_failure(&plain, &url, true);
        let fix = finding.fix.unwrap_or_default();
        assert_eq!(layer, Layer::Tls);
        assert!(fix.contains("DIFY_API_BASE=http://dify.example.com/v1"), "{fix}");
        let untrusted =
            DifyError::Connect { url: url.to_string(), reason: "invalid peer certificate: UnknownIssuer".into() };
        assert!(http_failure(&untrusted, &url, true).1.fix.unwrap_or_default().contains("trust store"));
        let refused = DifyError::Connect { url: url.to_string(), reason: "Connection refused (os error 111)".into() };
        assert_eq!(http_failure(&refused, &url, true).0, Layer::Tcp);
    }
}

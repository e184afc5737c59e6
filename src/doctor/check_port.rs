//! `check-port` (the guide's problem 2, "Address already in use"): binds SERVER_HOST:
//! SERVER_PORT the way `serve` does. When the port is taken it names the process holding it
//! (on Linux from /proc, no lsof or netstat needed), asks it for `/health` to tell an
//! opendify that is already serving (a warning: that is normal while debugging a running
//! service) from a stranger, and finds a free port to suggest.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::context::Context;
use super::report::CheckResult;
use crate::finding::Finding;
use crate::secret::mask_keys_in;

pub(crate) const ID: &str = "check-port";

#[derive(Debug, Serialize)]
struct Details {
    host: String,
    port: u16,
    address: String,
    bindable: bool,
    error: Option<String>,
    holders: Vec<Holder>,
    /// The port answered `/health` like opendify.
    opendify_serving: bool,
    free_port: Option<u16>,
}

/// A process listening on the port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Holder {
    pub pid: u32,
    /// Its command line, with app keys masked.
    pub command: String,
}

pub(crate) async fn run(ctx: &Context) -> CheckResult {
    let config = match ctx.require_config(ID) {
        Ok(config) => config,
        Err(result) => return *result,
    };
    let mut result = CheckResult::new(ID);
    let address = config.listen_addr();
    let mut details = Details {
        host: config.host.clone(),
        port: config.port,
        address: address.clone(),
        bindable: false,
        error: None,
        holders: Vec::new(),
        opendify_serving: false,
        free_port: None,
    };
    // The same call `serve` makes; the listener is dropped at once.
    let bound = tokio::net::TcpListener::bind(&address).await;
    match bound {
        Ok(listener) => {
            drop(listener);
            details.bindable = true;
            result.summary(format!("{address} is free"));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            details.error = Some(e.to_string());
            details.holders = holders(config.port);
            details.opendify_serving = answers_like_opendify(&config.host, config.port, ctx.step_timeout).await;
            details.free_port = free_port(&config.host, config.port).await;
            explain_in_use(&mut result, &details);
        }
        Err(e) => {
            details.error = Some(e.to_string());
            result.summary(format!("cannot listen on {address}"));
            let fix = match e.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "ports below 1024 need privileges: SERVER_PORT={} (or run with CAP_NET_BIND_SERVICE)",
                    if config.port < 1024 { 5000 } else { config.port }
                ),
                std::io::ErrorKind::AddrNotAvailable => format!(
                    "{} is not an address of this machine: SERVER_HOST=127.0.0.1 (this machine only) or SERVER_HOST=0.0.0.0 (all interfaces, e.g. in a container)",
                    config.host
                ),
                _ => "check SERVER_HOST and SERVER_PORT".to_string(),
            };
            result.fail(Finding::with_fix(format!("binding {address} failed: {e}"), fix));
        }
    }
    result.line(format!("address: {address}"));
    for holder in &details.holders {
        result.line(format!("held by PID {}: {}", holder.pid, holder.command));
    }
    result.details(details);
    result
}

fn explain_in_use(result: &mut CheckResult, details: &Details) {
    let address = &details.address;
    let who = match details.holders.as_slice() {
        [] => "another process".to_string(),
        [one] => format!("PID {} `{}`", one.pid, short(&one.command)),
        many => format!("PIDs {}", many.iter().map(|h| h.pid.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let port_fix = details.free_port.map(|p| format!("SERVER_PORT={p} (free)"));
    let stop_fix = match details.holders.as_slice() {
        [] => None,
        holders => Some(format!("kill {}", holders.iter().map(|h| h.pid.to_string()).collect::<Vec<_>>().join(" "))),
    };
    let find_fix = if details.holders.is_empty() {
        Some(if cfg!(target_os = "linux") {
            format!("run the doctor as root to see the process (`sudo ss -ltnp 'sport = :{}'`)", details.port)
        } else {
            format!("find the process with `lsof -nP -iTCP:{} -sTCP:LISTEN`", details.port)
        })
    } else {
        None
    };
    if details.opendify_serving {
        result.summary(format!("{address} is in use by a running opendify ({who})"));
        let fix = match (&port_fix, &stop_fix) {
            (Some(port), Some(stop)) => format!("fine while it runs; to start another, set {port}, or stop it: {stop}"),
            (Some(port), None) => format!("fine while it runs; to start another, set {port}"),
            (None, Some(stop)) => format!("fine while it runs; to restart it, stop it first: {stop}"),
            (None, None) => "fine while it runs; stop it before starting another".to_string(),
        };
        result.warn(Finding::with_fix(format!("opendify is already serving on {address} ({who})"), fix));
        return;
    }
    result.summary(format!("{address} is in use by {who}"));
    let fix = match (&port_fix, &stop_fix, &find_fix) {
        (Some(port), Some(stop), _) => format!("{port}, or stop the process: {stop}"),
        (Some(port), None, Some(find)) => format!("{port}, or {find}"),
        (Some(port), None, None) => port.clone(),
        (None, Some(stop), _) => format!("stop the process: {stop}, or choose another SERVER_PORT"),
        (None, None, Some(find)) => format!("choose another SERVER_PORT, or {find}"),
        (None, None, None) => "choose another SERVER_PORT".to_string(),
    };
    result.fail(Finding::with_fix(format!("{address} is already in use by {who}"), fix));
}

fn short(command: &str) -> String {
    let mut text: String = command.chars().take(60).collect();
    if text.len() < command.len() {
        text.push('…');
    }
    text
}

/// Where to reach a server listening on `host` from this machine.
pub(crate) fn local_target(host: &str) -> String {
    match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => format!("[{}]", Ipv6Addr::LOCALHOST),
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        Ok(IpAddr::V4(ip)) => ip.to_string(),
        Err(_) => host.to_string(),
    }
}

/// Whether `/health` on the port answers opendify's `{"status":"ok"}`.
async fn answers_like_opendify(host: &str, port: u16, timeout: Duration) -> bool {
    let url = format!("http://{}:{port}/health", local_target(host));
    let Ok(client) = reqwest::Client::builder().timeout(timeout.min(Duration::from_secs(3))).no_proxy().build() else {
        return false;
    };
    let Ok(response) = client.get(&url).send().await else { return false };
    if !response.status().is_success() {
        return false;
    }
    match response.json::<serde_json::Value>().await {
        Ok(body) => body == serde_json::json!({"status": "ok"}),
        Err(_) => false,
    }
}

/// The first port after `port` that can be bound on `host`.
async fn free_port(host: &str, port: u16) -> Option<u16> {
    let ip = host.trim_matches(['[', ']']);
    for candidate in (port.saturating_add(1)..=port.saturating_add(100)).filter(|c| *c != port) {
        let address = match ip.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, candidate).to_string(),
            Err(_) => format!("{host}:{candidate}"),
        };
        if tokio::net::TcpListener::bind(&address).await.is_ok() {
            return Some(candidate);
        }
    }
    None
}

/// The processes with a listening TCP socket on `port` (Linux: /proc; elsewhere none).
pub(crate) fn holders(port: u16) -> Vec<Holder> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(processes) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in processes.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| target.to_str().and_then(socket_inode))
                .is_some_and(|inode| inodes.contains(&inode))
        });
        if holds {
            found.push(Holder { pid, command: command_line(pid) });
        }
    }
    found.sort_by_key(|h| h.pid);
    found
}

/// Inodes of sockets in LISTEN state on `port` in a /proc/net/tcp{,6} table.
pub(crate) fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (*state == LISTEN && local_port == port && inode != 0).then_some(inode)
        })
        .collect()
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = raw.split(|b| *b == 0).filter(|p| !p.is_empty()).map(String::from_utf8_lossy).collect::<Vec<_>>();
    if text.is_empty() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        return mask_keys_in(comm.trim());
    }
    mask_keys_in(&text.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 24177 1 0\n   1: 0100007F:1388 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0\n   2: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1207 1 0\n";
        assert_eq!(listening_inodes(table, 5000), [24177]);
        assert_eq!(listening_inodes(table, 2024), [1207]);
        assert!(listening_inodes(table, 80).is_empty());
        assert_eq!(socket_inode("socket:[24177]"), Some(24177));
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn wildcard_hosts_are_reached_on_loopback() {
        assert_eq!(local_target("0.0.0.0"), "127.0.0.1");
        assert_eq!(local_target("::"), "[::1]");
        assert_eq!(local_target("[::]"), "[::1]");
        assert_eq!(local_target("localhost"), "localhost");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_found_holding_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let found = holders(port);
        assert_eq!(found.iter().map(|h| h.pid).collect::<Vec<_>>(), [std::process::id()]);
    }
}

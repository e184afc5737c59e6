//! `opendify doctor report`: the guide's "getting help" step (uname, versions, the redacted
//! `.env`, the last 50 log lines) as one Markdown document to paste into an issue. The
//! doctor runs every check as usual; this adds the system, the configuration table and the
//! tail of LOG_FILE, and writes the document. Nothing secret may leave in it: settings are
//! masked by the loader, and every line goes through [`Redactor`] before it is written.

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::cert::iso;
use super::check_config::ID as CHECK_CONFIG;
use super::context::stdout;
use super::files::parent_dir;
use super::report::{self, RenderOptions, Report};
use crate::config::{EnvFileStatus, Loaded};
use crate::secret::{Redactor, mask_url_credentials};

#[derive(Debug, Clone)]
pub(crate) struct BundleOptions {
    pub output: Option<PathBuf>,
    pub log_lines: usize,
}

/// What the bundle adds to the checks, gathered before they run (the log tail as it was
/// when the doctor started), and the redactor every line goes through.
pub(crate) struct Gathered {
    redactor: Redactor,
    log: LogTail,
    system: System,
}

impl Gathered {
    pub fn new(loaded: &Loaded, log_lines: usize) -> Gathered {
        Gathered { redactor: redactor(loaded), log: LogTail::read(loaded, log_lines), system: System::detect() }
    }

    /// Writes the Markdown to `output` (stdout when none); returns the exit code: 0 once
    /// written (the checks' verdicts are in the report), 2 when it cannot be written.
    pub fn write(&self, loaded: &Loaded, report: &Report, output: Option<&Path>) -> u8 {
        let markdown = self.redactor.redact(&render(loaded, report, &self.system, &self.log));
        match output {
            None => {
                stdout(&markdown);
                0
            }
            Some(path) => match std::fs::write(path, &markdown) {
                Ok(()) => {
                    eprintln!("report written to {} (review it before posting)", path.display());
                    0
                }
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    2
                }
            },
        }
    }
}

/// The machine, as the guide asked for it (`uname -a`, versions).
pub(crate) struct System {
    pub os: String,
    pub kernel: Option<String>,
    pub arch: &'static str,
    pub container: Option<&'static str>,
}

impl System {
    pub fn detect() -> System {
        let pretty = std::fs::read_to_string("/etc/os-release").ok().and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string())
        });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty());
        let container = if Path::new("/.dockerenv").exists() {
            Some("Docker")
        } else if Path::new("/run/.containerenv").exists() {
            Some("Podman")
        } else {
            None
        };
        System {
            os: pretty.unwrap_or_else(|| std::env::consts::OS.to_string()),
            kernel,
            arch: std::env::consts::ARCH,
            container,
        }
    }
}

/// The end of the log file, or why there is none.
pub(crate) enum LogTail {
    Lines { path: PathBuf, lines: Vec<String> },
    Missing { reason: String },
}

impl LogTail {
    pub fn read(loaded: &Loaded, count: usize) -> LogTail {
        let configured = loaded
            .config
            .as_ref()
            .and_then(|c| c.log_file.clone())
            .or_else(|| {
                loaded.settings.iter().find(|s| s.name == "LOG_FILE").and_then(|s| s.value.clone()).map(PathBuf::from)
            })
            .filter(|p| !p.as_os_str().is_empty());
        let Some(path) = configured else {
            return LogTail::Missing {
                reason: "LOG_FILE is not set: logs go to stderr. Add the last lines by hand (`docker logs --tail 50 <container>` or `journalctl -u opendify -n 50`).".into(),
            };
        };
        let Some(file) = newest_log(&path) else {
            return LogTail::Missing { reason: format!("LOG_FILE is {}, but no such file exists yet", path.display()) };
        };
        match tail(&file, count) {
            Ok(lines) => LogTail::Lines { path: file, lines },
            Err(e) => LogTail::Missing { reason: format!("cannot read {}: {e}", file.display()) },
        }
    }
}

/// The log file itself, or its newest rotated sibling (`app.log.2026-11-26`).
fn newest_log(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    let name = path.file_name()?.to_str()?.to_string();
    let dir = parent_dir(path);
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&name)))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

/// The last `count` lines, reading at most the last 256 KiB.
fn tail(path: &Path, count: usize) -> std::io::Result<Vec<String>> {
    const WINDOW: u64 = 256 * 1024;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // most likely a partial line
    }
    let from = lines.len().saturating_sub(count);
    Ok(lines[from..].iter().map(|l| l.to_string()).collect())
}

/// Every secret the configuration names, for the [`Redactor`].
fn redactor(loaded: &Loaded) -> Redactor {
    let mut secrets = Vec::new();
    if let Some(config) = &loaded.config {
        secrets.extend(config.models.iter().map(|m| m.key.expose().to_string()));
        secrets.extend(config.unnamed_keys.iter().map(|k| k.expose().to_string()));
        secrets.extend(config.proxy_api_keys.iter().map(|k| k.expose().to_string()));
        secrets.extend(config.jwt_secret.iter().map(|k| k.expose().to_string()));
        secrets.extend(config.admin_api_key.iter().map(|k| k.expose().to_string()));
    }
    Redactor::new(secrets)
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The whole Markdown document.
pub(crate) fn render(loaded: &Loaded, report: &Report, system: &System, log: &LogTail) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## opendify doctor report\n");
    system_table(&mut md, loaded, system);
    let _ = writeln!(md, "\n### Checks\n\n```text");
    md.push_str(&report.render_human(RenderOptions { colour: false, verbose: false }));
    let _ = writeln!(md, "```");
    configuration_table(&mut md, loaded);
    check_details(&mut md, report);
    log_section(&mut md, log);
    let _ = writeln!(
        md,
        "\n_App keys are masked (`app-ab…yz`) and known secrets removed; review before posting. Generated by `opendify doctor report` ({})._",
        report::format_duration(report.checks.iter().map(|c| c.duration).sum())
    );
    md
}

/// The version, the machine, the env file and when.
fn system_table(md: &mut String, loaded: &Loaded, system: &System) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    let env_file = match &loaded.env_file {
        EnvFileStatus::Loaded { path } => format!("{} (loaded)", path.display()),
        EnvFileStatus::NotFound { path } => format!("{} (not found)", path.display()),
        EnvFileStatus::Unreadable { path, .. } => format!("{} (unreadable)", path.display()),
    };
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| opendify | {} |", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(md, "| OS | {} ({}) |", cell(&system.os), system.arch);
    if let Some(kernel) = &system.kernel {
        let _ = writeln!(md, "| kernel | {} |", cell(kernel));
    }
    let _ = writeln!(md, "| container | {} |", system.container.unwrap_or("no"));
    let _ = writeln!(md, "| env file | {} |", cell(&env_file));
    let _ = writeln!(md, "| generated | {} |", iso(now));
}

/// Every setting, masked, with its source.
fn configuration_table(md: &mut String, loaded: &Loaded) {
    let _ = writeln!(md, "\n### Configuration (secrets masked)\n\n| setting | value | source |\n|---|---|---|");
    for setting in &loaded.settings {
        let value = setting.value.as_deref().map(mask_url_credentials).unwrap_or_else(|| "(unset)".into());
        let _ = writeln!(md, "| {} | `{}` | {} |", setting.name, cell(&value), setting.source);
    }
}

/// The detail lines of every check but check-config (the configuration table has them).
fn check_details(md: &mut String, report: &Report) {
    let details: Vec<_> = report.checks.iter().filter(|c| c.id != CHECK_CONFIG && !c.lines.is_empty()).collect();
    if details.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n### Check details\n\n```text");
    for check in details {
        let _ = writeln!(md, "[{}] {}", check.id, check.status().as_str());
        for line in &check.lines {
            let _ = writeln!(md, "    {line}");
        }
    }
    let _ = writeln!(md, "```");
}

fn log_section(md: &mut String, log: &LogTail) {
    match log {
        LogTail::Lines { path, lines } => {
            let _ = writeln!(md, "\n### Log (last {} lines of {})\n\n```text", lines.len(), path.display());
            for line in lines {
                let _ = writeln!(md, "{line}");
            }
            let _ = writeln!(md, "```");
        }
        LogTail::Missing { reason } => {
            let _ = writeln!(md, "\n### Log\n\n{reason}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("app.log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&file, text).expect("write");
        let lines = tail(&file, 3).expect("tail");
        assert_eq!(lines, ["line 98", "line 99", "line 100"]);
        let rotated = dir.path().join("other.log.2026-11-26");
        std::fs::write(&rotated, "x\n").expect("write");
        assert_eq!(newest_log(&dir.path().join("other.log")), Some(rotated));
        assert_eq!(newest_log(&dir.path().join("none.log")), None);
    }
}

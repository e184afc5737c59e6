//! The one result type every check returns, and the two ways a run is shown: lines for
//! people (`✓ check-config …`, with `reason:`/`fix:` under a problem) and one JSON document
//! for CI with a stable schema (no dynamic keys). Keeping both renderings next to the type
//! means a check cannot say something to people that CI does not see, or the reverse.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use colored::Colorize;
use serde::Serialize;
use serde_json::Value;

use crate::finding::Finding;

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    pub fn symbol(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
            Status::Skip => "-",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }

    fn painted(self, colour: bool) -> String {
        let symbol = self.symbol();
        if !colour {
            return symbol.to_string();
        }
        match self {
            Status::Ok => symbol.green().bold().to_string(),
            Status::Warn => symbol.yellow().bold().to_string(),
            Status::Fail => symbol.red().bold().to_string(),
            Status::Skip => symbol.dimmed().to_string(),
        }
    }
}

/// One thing a check found wrong: how bad it is, and the problem with its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    /// `warn` or `fail`.
    pub level: Status,
    pub finding: Finding,
    /// Caused by the network (DNS, TCP, TLS, HTTP, timeouts): `--network-errors=warn` turns
    /// such failures into warnings.
    pub network: bool,
}

impl Issue {
    pub fn fail(finding: Finding) -> Self {
        Issue { level: Status::Fail, finding, network: false }
    }

    pub fn warn(finding: Finding) -> Self {
        Issue { level: Status::Warn, finding, network: false }
    }

    /// A failure caused by the network, which `--network-errors=warn` reports as a warning.
    pub fn network_fail(finding: Finding) -> Self {
        Issue { level: Status::Fail, finding, network: true }
    }

    pub fn fix(&self) -> Option<&str> {
        self.finding.fix.as_deref()
    }
}

/// The JSON of an issue is `{"level", "reason", "fix"}`: the documented schema names the
/// finding's message `reason`.
impl Serialize for Issue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            level: Status,
            reason: &'a str,
            fix: Option<&'a str>,
        }
        Json { level: self.level, reason: &self.finding.message, fix: self.finding.fix.as_deref() }
            .serialize(serializer)
    }
}

/// A check's typed details, turned into JSON only when the report is rendered.
pub(crate) trait CheckDetails: fmt::Debug + Send + Sync {
    fn to_json(&self) -> Value;
}

impl<T: Serialize + fmt::Debug + Send + Sync> CheckDetails for T {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// What one check found.
#[derive(Debug, Clone)]
pub(crate) struct CheckResult {
    pub id: &'static str,
    pub summary: String,
    pub duration: Duration,
    /// Check-specific facts, with the same keys whatever the outcome (none: the check did
    /// not run or did not finish, shown as `{}`).
    details: Option<Arc<dyn CheckDetails>>,
    pub issues: Vec<Issue>,
    /// Detail lines for people (shown for a single check, or with `--verbose`).
    pub lines: Vec<String>,
    skipped: bool,
}

impl CheckResult {
    pub fn new(id: &'static str) -> Self {
        CheckResult {
            id,
            summary: String::new(),
            duration: Duration::ZERO,
            details: None,
            issues: Vec::new(),
            lines: Vec::new(),
            skipped: false,
        }
    }

    /// A check that did not run, and why.
    pub fn skipped(id: &'static str, why: impl Into<String>) -> Self {
        let mut result = CheckResult::new(id);
        result.summary = why.into();
        result.skipped = true;
        result
    }

    pub fn summary(&mut self, summary: impl Into<String>) -> &mut Self {
        self.summary = summary.into();
        self
    }

    pub fn details(&mut self, details: impl CheckDetails + 'static) -> &mut Self {
        self.details = Some(Arc::new(details));
        self
    }

    pub fn has_details(&self) -> bool {
        self.details.is_some()
    }

    /// The details as they appear in the JSON document.
    pub fn details_json(&self) -> Value {
        match &self.details {
            Some(details) => details.to_json(),
            None => Value::Object(serde_json::Map::new()),
        }
    }

    pub fn line(&mut self, line: impl Into<String>) -> &mut Self {
        self.lines.push(line.into());
        self
    }

    pub fn fail(&mut self, finding: Finding) -> &mut Self {
        self.push(Issue::fail(finding))
    }

    pub fn warn(&mut self, finding: Finding) -> &mut Self {
        self.push(Issue::warn(finding))
    }

    /// A failure caused by the network, which `--network-errors=warn` reports as a warning.
    pub fn network_fail(&mut self, finding: Finding) -> &mut Self {
        self.push(Issue::network_fail(finding))
    }

    pub fn push(&mut self, issue: Issue) -> &mut Self {
        self.issues.push(issue);
        self
    }

    pub fn is_skipped(&self) -> bool {
        self.skipped
    }

    /// The worst issue decides; no issue is a pass.
    pub fn status(&self) -> Status {
        if self.skipped {
            return Status::Skip;
        }
        if self.issues.iter().any(|i| i.level == Status::Fail) {
            Status::Fail
        } else if self.issues.iter().any(|i| i.level == Status::Warn) {
            Status::Warn
        } else {
            Status::Ok
        }
    }

    /// The issue shown first: the first failure, else the first warning.
    pub fn main_issue(&self) -> Option<&Issue> {
        self.issues.iter().find(|i| i.level == Status::Fail).or_else(|| self.issues.first())
    }

    /// The fix of the main issue, or the first fix any issue has.
    pub fn main_fix(&self) -> Option<&str> {
        self.main_issue().and_then(Issue::fix).or_else(|| self.issues.iter().find_map(Issue::fix))
    }

    /// `--network-errors=warn`: network failures become warnings.
    pub fn soften_network_failures(&mut self) {
        for issue in &mut self.issues {
            if issue.network && issue.level == Status::Fail {
                issue.level = Status::Warn;
            }
        }
    }
}

/// How a run is judged and shown.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RenderOptions {
    pub colour: bool,
    /// Show every check's detail lines.
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Summary {
    pub passed: usize,
    pub warnings: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// A whole doctor run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub checks: Vec<CheckResult>,
    /// `--strict`: warnings fail the run.
    pub strict: bool,
}

impl Report {
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for check in &self.checks {
            match check.status() {
                Status::Ok => summary.passed += 1,
                Status::Warn => summary.warnings += 1,
                Status::Fail => summary.failed += 1,
                Status::Skip => summary.skipped += 1,
            }
        }
        summary
    }

    /// No check failed (and, with `--strict`, none warned).
    pub fn ok(&self) -> bool {
        let summary = self.summary();
        summary.failed == 0 && !(self.strict && summary.warnings > 0)
    }

    /// 0 when [`Report::ok`], else 1 ("found a problem").
    pub fn exit_code(&self) -> u8 {
        if self.ok() { 0 } else { 1 }
    }

    pub fn to_json(&self) -> Value {
        #[derive(Serialize)]
        struct JsonCheck<'a> {
            id: &'a str,
            status: Status,
            summary: &'a str,
            duration_ms: u64,
            details: Value,
            reason: Option<&'a str>,
            fix: Option<&'a str>,
            issues: &'a [Issue],
        }
        #[derive(Serialize)]
        struct JsonReport<'a> {
            version: &'static str,
            ok: bool,
            strict: bool,
            checks: Vec<JsonCheck<'a>>,
            summary: Summary,
        }
        let checks = self
            .checks
            .iter()
            .map(|c| JsonCheck {
                id: c.id,
                status: c.status(),
                summary: &c.summary,
                duration_ms: u64::try_from(c.duration.as_millis()).unwrap_or(u64::MAX),
                details: c.details_json(),
                reason: c.main_issue().map(|i| i.finding.message.as_str()),
                fix: c.main_fix(),
                issues: &c.issues,
            })
            .collect();
        let report = JsonReport {
            version: env!("CARGO_PKG_VERSION"),
            ok: self.ok(),
            strict: self.strict,
            checks,
            summary: self.summary(),
        };
        serde_json::to_value(report).unwrap_or(Value::Null)
    }

    /// The closing line: "5 passed, 1 warning, 0 failed" (", 1 skipped" when any were).
    pub fn summary_line(&self) -> String {
        let s = self.summary();
        let mut line = format!(
            "{} passed, {} warning{}, {} failed",
            s.passed,
            s.warnings,
            if s.warnings == 1 { "" } else { "s" },
            s.failed
        );
        if s.skipped > 0 {
            let _ = write!(line, ", {} skipped", s.skipped);
        }
        line
    }

    /// Everything people see, as one text (the doctor prints check by check instead).
    pub fn render_human(&self, options: RenderOptions) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out.push_str(&render_check(check, options));
        }
        out.push_str(&self.render_summary(options));
        out
    }

    pub fn render_summary(&self, options: RenderOptions) -> String {
        let line = self.summary_line();
        if !options.colour {
            return format!("{line}\n");
        }
        let painted = if self.ok() { line.green().to_string() } else { line.red().to_string() };
        format!("{painted}\n")
    }
}

/// Width of the check-name column: the longest check id.
const NAME_WIDTH: usize = 16;

/// One check as people see it: the status line, then `reason:`/`fix:` for each issue, then
/// the detail lines when asked for.
pub(crate) fn render_check(check: &CheckResult, options: RenderOptions) -> String {
    let status = check.status();
    let mut out = String::new();
    let name = format!("{:<NAME_WIDTH$}", check.id);
    let name = if options.colour { name.bold().to_string() } else { name };
    if status == Status::Skip {
        let summary = if options.colour { check.summary.dimmed().to_string() } else { check.summary.clone() };
        let _ = writeln!(out, "{} {name} {summary}", status.painted(options.colour));
    } else {
        let duration = format!("({})", format_duration(check.duration));
        let duration = if options.colour { duration.dimmed().to_string() } else { duration };
        let _ = writeln!(out, "{} {name} {} {duration}", status.painted(options.colour), check.summary);
    }
    for issue in &check.issues {
        let (reason_label, fix_label) = if options.colour {
            let reason = if issue.level == Status::Fail { "reason:".red() } else { "reason:".yellow() };
            (reason.to_string(), "fix:".cyan().to_string())
        } else {
            ("reason:".to_string(), "fix:".to_string())
        };
        let _ = writeln!(out, "    {reason_label} {}", issue.finding.message);
        if let Some(fix) = &issue.finding.fix {
            let _ = writeln!(out, "    {fix_label} {fix}");
        }
    }
    if options.verbose {
        for line in &check.lines {
            let line = if options.colour { line.dimmed().to_string() } else { line.clone() };
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

/// `12ms` under a second, `1.2s` above.
pub(crate) fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 { format!("{ms}ms") } else { format!("{:.1}s", duration.as_secs_f64()) }
}

/// Milliseconds with one decimal, for measured times in details.
pub(crate) fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &'static str, issues: &[(Status, bool)]) -> CheckResult {
        let mut r = CheckResult::new(id);
        r.summary("s");
        for (level, network) in issues {
            r.push(Issue { level: *level, finding: Finding::with_fix("why", "do this"), network: *network });
        }
        r
    }

    #[test]
    fn status_is_the_worst_issue_and_summary_counts_each() {
        let report = Report {
            checks: vec![
                result("a", &[]),
                result("b", &[(Status::Warn, false)]),
                result("c", &[(Status::Warn, false), (Status::Fail, true)]),
                CheckResult::skipped("d", "skipped"),
            ],
            strict: false,
        };
        assert_eq!(report.summary(), Summary { passed: 1, warnings: 1, failed: 1, skipped: 1 });
        assert_eq!(report.summary_line(), "1 passed, 1 warning, 1 failed, 1 skipped");
        assert_eq!(report.exit_code(), 1);
    }

    #[test]
    fn strict_makes_warnings_fail_and_network_failures_can_be_softened() {
        let mut report = Report { checks: vec![result("a", &[(Status::Fail, true)])], strict: false };
        report.checks[0].soften_network_failures();
        assert_eq!(report.checks[0].status(), Status::Warn);
        assert_eq!(report.exit_code(), 0);
        report.strict = true;
        assert_eq!(report.exit_code(), 1);
        let mut local = result("b", &[(Status::Fail, false)]);
        local.soften_network_failures();
        assert_eq!(local.status(), Status::Fail, "only network failures soften");
    }

    #[test]
    fn human_lines_have_symbol_name_summary_duration_and_fix() {
        let mut check = result("check-port", &[(Status::Fail, false)]);
        check.duration = Duration::from_millis(1500);
        check.line("detail");
        let text = render_check(&check, RenderOptions { colour: false, verbose: true });
        assert_eq!(text, "✗ check-port       s (1.5s)\n    reason: why\n    fix: do this\n    detail\n", "{text}");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let report = Report { checks: vec![result("a", &[(Status::Warn, false)])], strict: false };
        let json = report.to_json();
        assert_eq!(json["ok"], true);
        assert_eq!(json["checks"][0]["status"], "warn");
        assert_eq!(json["checks"][0]["fix"], "do this");
        assert_eq!(json["summary"]["warnings"], 1);
        let keys: Vec<&str> = json["checks"][0].as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap();
        assert_eq!(keys, ["id", "status", "summary", "duration_ms", "details", "reason", "fix", "issues"]);
    }
}

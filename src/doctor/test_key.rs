//! `test-key [MODEL…]` (the guide's problems 5 and 6: 401, empty model list): asks Dify
//! about each configured app with its key, through the same discovery `serve` runs at
//! startup (`bridge::apps::describe`: `/info` and `/parameters`). Says which keys work, what
//! each app is (name, mode, required inputs, file upload), and for each failure whether the
//! key is wrong, the app unavailable or Dify unreachable. Read-only unless `--live`, which
//! sends one tiny message per model, as user `opendify-doctor`, and says so.

use futures_util::future::join_all;
use serde::Serialize;

use super::context::{Context, Facts};
use super::probe::{self, Ended, explain};
use super::report::{self, CheckResult};
use crate::bridge::AppRoute;
use crate::bridge::ModeSource;
use crate::bridge::apps::describe;
use crate::config::{Config, ModelSpec};
use crate::dify::{AppMode, DifyClient, DifyError, InputField};
use crate::finding::Finding;

pub(crate) const ID: &str = "test-key";

/// The Dify `user` of `--live` messages.
pub(crate) const LIVE_USER: &str = "opendify-doctor";

#[derive(Debug, Clone, Default)]
pub(crate) struct KeyOptions {
    /// Only these models (empty: all).
    pub models: Vec<String>,
    pub live: bool,
}

#[derive(Debug, Serialize)]
struct Details {
    live: bool,
    models: Vec<ModelReport>,
}

/// What Dify said about one model's app.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModelReport {
    pub model: String,
    pub key: String,
    pub ok: bool,
    pub app_name: Option<String>,
    /// The mode opendify will use, and where it came from (`configured`, `info`, `default`).
    pub mode: Option<String>,
    pub mode_source: Option<&'static str>,
    /// The mode Dify reports, when it reports one.
    pub dify_mode: Option<String>,
    pub inputs: Vec<InputField>,
    /// The input variable that receives the message (workflow and completion apps).
    pub input_variable: Option<String>,
    pub file_upload: Option<bool>,
    /// `/parameters` could not be read.
    pub parameters_missing: bool,
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub live: Option<LiveResult>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LiveResult {
    pub ok: bool,
    pub user: &'static str,
    pub ms: f64,
    pub answer_chars: usize,
    pub error: Option<String>,
}

/// One model as tested: what is shown, the route serve would use, the typed error.
struct Tested {
    report: ModelReport,
    route: Option<AppRoute>,
    error: Option<DifyError>,
}

pub(crate) async fn run(ctx: &Context, options: &KeyOptions, facts: &mut Facts) -> CheckResult {
    let (config, client) = match ctx.dify(ID, facts) {
        Ok(found) => found,
        Err(result) => return *result,
    };
    let mut result = CheckResult::new(ID);
    ctx.progress.set(format!("{ID}: asking Dify about {} app(s)…", config.models.len() + config.unnamed_keys.len()));
    let mut tested = describe_all(&client, config).await;
    if !options.models.is_empty() {
        keep_named(&mut result, &mut tested, &options.models);
    }
    if options.live {
        for t in &mut tested {
            if let (true, Some(route)) = (t.report.ok, &t.route) {
                ctx.progress.set(format!("{ID}: sending one message to `{}`…", t.report.model));
                t.report.live = Some(live(ctx, config, &client, route).await);
            }
        }
    }
    judge(&mut result, &tested, &config.dify_api_base);
    if options.live {
        result.line(format!("--live: one message per model was sent as user `{LIVE_USER}`"));
    }
    facts.failed_models.extend(tested.iter().filter(|t| !t.report.ok).map(|t| t.report.model.clone()));
    result.summary(summary(&tested, options.live));
    result.details(Details { live: options.live, models: tested.into_iter().map(|t| t.report).collect() });
    result
}

/// `test-key MODEL…`: only the models named; a name that is not configured is a failure.
fn keep_named(result: &mut CheckResult, tested: &mut Vec<Tested>, wanted: &[String]) {
    let known: Vec<String> = tested.iter().map(|t| t.report.model.clone()).filter(|n| !n.is_empty()).collect();
    for name in wanted.iter().filter(|name| !known.contains(name)) {
        result.fail(Finding::with_fix(
            format!("no model named `{name}` is configured (configured: {})", known.join(", ")),
            "use a model name from MODEL_CONFIG; `opendify doctor check-config` lists them",
        ));
    }
    tested.retain(|t| wanted.contains(&t.report.model));
}

/// A line per model, each failure explained, advice for the apps that answered. Dify
/// unreachable for every model is one problem, not one per model.
fn judge(result: &mut CheckResult, tested: &[Tested], base: &str) {
    let all_unreachable =
        !tested.is_empty() && tested.iter().all(|t| t.error.as_ref().is_some_and(|e| explain(e, "", base).network));
    for t in tested {
        result.line(model_line(&t.report));
        match &t.error {
            Some(_) if all_unreachable => {}
            Some(error) => {
                result.push(explain(error, &t.report.model, base));
            }
            None => advise(result, &t.report),
        }
    }
    if let Some(error) = tested.iter().find_map(|t| t.error.as_ref()).filter(|_| all_unreachable) {
        let mut issue = explain(error, "", base);
        issue.finding.message = format!("cannot reach Dify for any of the {} models: {error}", tested.len());
        result.push(issue);
    }
}

/// `3 keys valid`, or how many failed.
fn summary(tested: &[Tested], live: bool) -> String {
    let valid = tested.iter().filter(|t| t.report.ok).count();
    let note = if live { ", one live message each" } else { "" };
    match (valid, tested.len()) {
        (_, 0) => "no model to test".to_string(),
        (v, t) if v == t => format!("{t} key{} valid{note}", if t == 1 { "" } else { "s" }),
        (v, t) => format!("{} of {t} keys failed{note}", t - v),
    }
}

/// Warnings about an app whose key works.
fn advise(result: &mut CheckResult, report: &ModelReport) {
    if let (Some(dify), Some("configured")) = (&report.dify_mode, report.mode_source)
        && Some(dify) != report.mode.as_ref()
    {
        result.warn(Finding::with_fix(
            format!(
                "MODEL_CONFIG sets mode {} for `{}`, but Dify says the app is {dify}",
                report.mode.as_deref().unwrap_or("?"),
                report.model
            ),
            format!("remove \"mode\" for `{}` from MODEL_CONFIG (Dify's answer is used then)", report.model),
        ));
    }
    if report.mode_source == Some("default") {
        result.warn(Finding::with_fix(format!("Dify's /info does not say which mode the app of `{}` is (older Dify); assuming chat", report.model), format!(
                "set it in MODEL_CONFIG: \"{}\":{{\"key\":\"app-…\",\"mode\":\"workflow\"}} (chat, agent-chat, advanced-chat, completion or workflow)",
                report.model
            )));
    }
    if report.parameters_missing {
        result.warn(Finding::with_fix(
            format!("Dify's /parameters for `{}` could not be read; input fields are unknown", report.model),
            "check the app in Dify; opendify will send the message as `query`",
        ));
    }
    let unfillable: Vec<&str> = report
        .inputs
        .iter()
        .filter(|f| f.required && Some(&f.variable) != report.input_variable.as_ref())
        .map(|f| f.variable.as_str())
        .collect();
    if !unfillable.is_empty() {
        result.warn(Finding::with_fix(
            format!(
                "the app of `{}` requires input{} {} that chat clients do not send; Dify will reject their requests",
                report.model,
                if unfillable.len() == 1 { "" } else { "s" },
                unfillable.join(", ")
            ),
            "make these inputs optional in the app's start form, or send them in the request's `inputs` object",
        ));
    }
    if let Some(live) = report.live.as_ref().filter(|l| !l.ok) {
        result.fail(Finding::with_fix(
            format!("`{}`: the live message failed: {}", report.model, live.error.as_deref().unwrap_or("?")),
            format!("run `opendify doctor test-stream {}` for details", report.model),
        ));
    }
}

fn model_line(report: &ModelReport) -> String {
    if !report.ok {
        return format!("{} [{}]: {}", report.model, report.key, report.error.as_deref().unwrap_or("failed"));
    }
    let mut text = format!(
        "{} [{}]: app \"{}\", mode {} ({})",
        report.model,
        report.key,
        report.app_name.as_deref().unwrap_or(""),
        report.mode.as_deref().unwrap_or("?"),
        match report.mode_source {
            Some("info") => "from Dify",
            Some("configured") => "from MODEL_CONFIG",
            _ => "assumed",
        }
    );
    if let Some(var) = &report.input_variable {
        text.push_str(&format!(", message goes to input `{var}`"));
    }
    let required: Vec<&str> = report.inputs.iter().filter(|f| f.required).map(|f| f.variable.as_str()).collect();
    if !required.is_empty() {
        text.push_str(&format!(", required inputs: {}", required.join(", ")));
    }
    if let Some(upload) = report.file_upload {
        text.push_str(if upload { ", file upload on" } else { ", file upload off" });
    }
    if let Some(live) = report.live.as_ref().filter(|l| l.ok) {
        text.push_str(&format!(", live: {} chars in {} ms", live.answer_chars, live.ms));
    }
    text
}

/// Describes every configured app concurrently, the way `serve` does at startup. Apps of
/// DIFY_API_KEYS are named after their `/info` name, like the server names them.
async fn describe_all(client: &DifyClient, config: &Config) -> Vec<Tested> {
    let mut specs: Vec<ModelSpec> = config.models.clone();
    specs.extend(config.unnamed_keys.iter().map(|key| ModelSpec::new(String::new(), key.clone())));
    join_all(specs.iter().map(|spec| test_one(client, spec))).await
}

async fn test_one(client: &DifyClient, spec: &ModelSpec) -> Tested {
    let route = describe(client, spec).await;
    let mut report = ModelReport {
        model: if spec.name.is_empty() { route.app_name.clone().unwrap_or_default() } else { spec.name.clone() },
        key: spec.key.masked(),
        ok: route.discovery_error.is_none(),
        app_name: route.app_name.clone(),
        mode: None,
        mode_source: None,
        dify_mode: None,
        inputs: Vec::new(),
        input_variable: None,
        file_upload: None,
        parameters_missing: false,
        error_kind: None,
        error: None,
        live: None,
    };
    if let Some(error) = route.discovery_error.clone() {
        report.error_kind = Some(error.kind().as_str());
        report.error = Some(error.to_string());
        return Tested { report, route: None, error: Some(error) };
    }
    report.mode = Some(route.mode.to_string());
    report.mode_source = Some(route.mode_source.as_str());
    report.dify_mode = match route.mode_source {
        ModeSource::Info => Some(route.mode.to_string()),
        ModeSource::Configured => client.info(&spec.key).await.ok().and_then(|info| info.mode),
        _ => None,
    };
    match &route.parameters {
        Some(parameters) => {
            report.inputs = parameters.input_fields();
            report.file_upload = Some(parameters.file_upload_enabled());
        }
        None => report.parameters_missing = true,
    }
    if matches!(route.mode, AppMode::Workflow | AppMode::Completion) {
        report.input_variable = Some(route.input_variable());
    }
    Tested { report, route: Some(route), error: None }
}

/// `--live`: one tiny message through serve's request building, as [`LIVE_USER`].
async fn live(ctx: &Context, config: &Config, client: &DifyClient, route: &AppRoute) -> LiveResult {
    let run = probe::measure_direct(&ctx.progress, ID, config, client, route, "ping", LIVE_USER).await;
    match run {
        Ok(run) => LiveResult {
            ok: run.ended == Ended::Finished,
            user: LIVE_USER,
            ms: report::millis(run.total),
            answer_chars: run.answer_chars,
            error: run.error,
        },
        Err(error) => {
            LiveResult { ok: false, user: LIVE_USER, ms: 0.0, answer_chars: 0, error: Some(error.to_string()) }
        }
    }
}

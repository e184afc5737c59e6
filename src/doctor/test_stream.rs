//! `test-stream [MODEL] [--via URL]` (the guide's problems 7, 8 and 12: cut streams, every
//! user showing up as default_user, slow answers): one streaming request, timed. Directly to
//! Dify it goes through serve's own request building and event translation, so "ended
//! properly" means what serve means by it; `--via` sends it through a running opendify like
//! Open WebUI would, with `X-OpenWebUI-User-Id`, and checks which user the server resolved
//! (its `X-Opendify-User` header).

use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Serialize;
use serde_json::{Value, json};

use super::context::{Context, Facts};
use super::probe::{self, Clock, Ended, StreamRun, Usage, explain};
use super::report::CheckResult;
use super::report::{format_duration, millis};
use crate::config::{Config, ModelSpec};
use crate::dify::sse::SseParser;
use crate::dify::{DifyClient, DifyError};
use crate::finding::Finding;

pub(crate) const ID: &str = "test-stream";

/// The header Open WebUI forwards the user in; `--via` sends it.
pub(crate) const OPENWEBUI_USER_HEADER: &str = "X-OpenWebUI-User-Id";
/// How `--via` told opendify who the user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserSent {
    /// The plain `X-OpenWebUI-User-Id`.
    Header,
    /// A token signed with OPENWEBUI_JWT_SECRET (serve ignores plain headers in JWT mode).
    Jwt,
}

impl UserSent {
    fn header(self) -> &'static str {
        match self {
            UserSent::Header => OPENWEBUI_USER_HEADER,
            UserSent::Jwt => "X-OpenWebUI-User-Jwt",
        }
    }
}

/// The header opendify answers with the user it resolved.
pub(crate) const RESOLVED_USER_HEADER: &str = "x-opendify-user";

#[derive(Debug, Clone)]
pub(crate) struct StreamOptions {
    pub model: Option<String>,
    pub via: Option<Url>,
    pub message: String,
    pub user: String,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            model: None,
            via: None,
            message: "Say hello in five words.".into(),
            user: "opendify-doctor".into(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Details {
    model: Option<String>,
    via: Option<String>,
    user_sent: String,
    user_resolved: Option<String>,
    time_to_headers_ms: Option<f64>,
    time_to_first_event_ms: Option<f64>,
    events: u64,
    keep_alives: u64,
    gaps_ms: Gaps,
    total_ms: Option<f64>,
    tokens_per_s: Option<f64>,
    usage: Option<Usage>,
    /// `finished`, `cut` or `error`; null when the request did not start.
    ended: Option<Ended>,
    finish_reason: Option<String>,
    answer_chars: usize,
    error: Option<String>,
}

impl Details {
    fn empty(options: &StreamOptions) -> Details {
        Details {
            model: options.model.clone(),
            via: options.via.as_ref().map(|u| u.to_string()),
            user_sent: options.user.clone(),
            user_resolved: None,
            time_to_headers_ms: None,
            time_to_first_event_ms: None,
            events: 0,
            keep_alives: 0,
            gaps_ms: Gaps::default(),
            total_ms: None,
            tokens_per_s: None,
            usage: None,
            ended: None,
            finish_reason: None,
            answer_chars: 0,
            error: None,
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct Gaps {
    p50: Option<f64>,
    p95: Option<f64>,
    max: Option<f64>,
}

fn gaps(list: &[Duration]) -> Gaps {
    if list.is_empty() {
        return Gaps::default();
    }
    let mut sorted = list.to_vec();
    sorted.sort();
    let rank = |q: f64| {
        let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        Some(millis(sorted[index]))
    };
    Gaps { p50: rank(0.50), p95: rank(0.95), max: sorted.last().map(|d| millis(*d)) }
}

pub(crate) async fn run(ctx: &Context, options: &StreamOptions, facts: &Facts) -> CheckResult {
    let mut result = match &options.via {
        Some(via) => run_via(ctx, options, via).await,
        None => run_direct(ctx, options, facts).await,
    };
    // Every outcome carries the same detail keys, even when the request never started.
    if !result.is_skipped() && !result.has_details() {
        result.details(Details::empty(options));
    }
    result
}

async fn run_direct(ctx: &Context, options: &StreamOptions, facts: &Facts) -> CheckResult {
    let (config, client) = match ctx.dify(ID, facts) {
        Ok(found) => found,
        Err(result) => return *result,
    };
    let mut result = CheckResult::new(ID);
    let Some(spec) = pick_model(config, options.model.as_deref(), &client).await else {
        let names: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
        result.summary("no such model");
        result.fail(Finding::with_fix(
            format!(
                "no model named `{}` is configured (configured: {})",
                options.model.as_deref().unwrap_or(""),
                names.join(", ")
            ),
            "use a model name from MODEL_CONFIG; `opendify doctor check-config` lists them",
        ));
        return result;
    };
    if facts.failed_models.contains(&spec.name) {
        return CheckResult::skipped(ID, format!("skipped: the key of `{}` failed (see test-key)", spec.name));
    }
    let route = crate::bridge::apps::describe(&client, &spec).await;
    let run = probe::measure_direct(&ctx.progress, ID, config, &client, &route, &options.message, &options.user).await;
    let idle = ctx.doctor_config(config).stream_idle_timeout;
    judge(&mut result, run, &spec.name, None, &options.user, idle, &config.dify_api_base);
    result
}

/// The model to test: the one named, else the first configured. Apps of DIFY_API_KEYS are
/// found by their Dify name.
async fn pick_model(config: &Config, wanted: Option<&str>, client: &DifyClient) -> Option<ModelSpec> {
    match wanted {
        None => {
            if let Some(first) = config.models.first() {
                return Some(first.clone());
            }
        }
        Some(name) => {
            if let Some(spec) = config.models.iter().find(|m| m.name == name) {
                return Some(spec.clone());
            }
        }
    }
    for key in &config.unnamed_keys {
        let info = client.info(key).await.ok()?;
        let name = info.name.trim().to_string();
        if wanted.is_none_or(|w| w == name) {
            return Some(ModelSpec { name, key: key.clone(), mode: None, input: None, output: None });
        }
    }
    None
}

/// Why a request through opendify could not start.
#[derive(Debug)]
enum ViaError {
    Connect(String),
    Status { status: u16, message: String, code: Option<String> },
}

async fn run_via(ctx: &Context, options: &StreamOptions, via: &Url) -> CheckResult {
    let mut result = CheckResult::new(ID);
    let base = via.as_str().trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base).to_string();
    let mut builder = reqwest::Client::builder().connect_timeout(ctx.step_timeout);
    if via.host_str().is_some_and(is_loopback) {
        builder = builder.no_proxy();
    }
    let http = match builder.build() {
        Ok(http) => http,
        Err(e) => {
            result.summary("cannot build an HTTP client");
            result.fail(Finding::new(e.to_string()));
            return result;
        }
    };
    let proxy_key = ctx.config().and_then(|c| c.proxy_api_keys.first().cloned());
    let model = match &options.model {
        Some(model) => Some(model.clone()),
        None => first_model(&http, &base, proxy_key.as_ref().map(|k| k.expose()), ctx.step_timeout).await,
    };
    let Some(model) = model else {
        result.summary(format!("no model to test at {base}"));
        result.network_fail(Finding::with_fix(format!("{base}/v1/models did not name a model"), format!("is `opendify serve` running at {base}? name the model: `opendify doctor test-stream MODEL --via {base}`")));
        return result;
    };
    let idle = ctx.config().map(|c| ctx.doctor_config(c).stream_idle_timeout).unwrap_or(Duration::from_secs(60));
    let run = measure_via(ctx, &http, &base, &model, options, proxy_key.as_ref().map(|k| k.expose()), idle).await;
    let run = match run {
        Ok(run) => run,
        Err(ViaError::Connect(reason)) => {
            result.summary(format!("cannot reach opendify at {base}"));
            result.network_fail(Finding::with_fix(
                format!("cannot connect to {base}: {reason}"),
                "is `opendify serve` running there? `opendify doctor check-port` on that machine tells",
            ));
            return result;
        }
        Err(ViaError::Status { status, message, code }) => {
            result.summary(format!("{base} answered HTTP {status}"));
            let jwt = ctx.config().is_some_and(|c| c.jwt_secret.is_some());
            let fix = match (status, code.as_deref()) {
                (401, Some("missing_user_token" | "invalid_user_token")) if jwt => {
                    "the server does not accept a token signed with this configuration's OPENWEBUI_JWT_SECRET: use the same secret on both (and in Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET)".to_string()
                }
                (401, Some("missing_user_token")) => {
                    "the server is in JWT mode (OPENWEBUI_JWT_SECRET): set the same secret in this machine's configuration so the doctor can sign its token".to_string()
                }
                (401, _) => {
                    "the server requires a proxy key (PROXY_API_KEYS): set the same key in this machine's configuration"
                        .to_string()
                }
                (404, Some("model_not_found")) => {
                    format!("`{model}` is not served there: name one from {base}/v1/models")
                }
                (404, _) => format!("{base} does not look like opendify: check the --via URL"),
                _ => "see the message; `opendify doctor test-key` on the server machine tests the keys".to_string(),
            };
            result.fail(Finding::with_fix(
                format!("opendify at {base} refused the request (HTTP {status}): {message}"),
                fix,
            ));
            return result;
        }
    };
    let dify_base = ctx.config().map(|c| c.dify_api_base.clone()).unwrap_or_default();
    let sent = if ctx.config().is_some_and(|c| c.jwt_secret.is_some()) { UserSent::Jwt } else { UserSent::Header };
    judge(&mut result, Ok(run), &model, Some((&base, sent)), &options.user, idle, &dify_base);
    result
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn first_model(http: &reqwest::Client, base: &str, key: Option<&str>, timeout: Duration) -> Option<String> {
    let mut request = http.get(format!("{base}/v1/models")).timeout(timeout);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let body: Value = request.send().await.ok()?.json().await.ok()?;
    body["data"].get(0)?["id"].as_str().map(str::to_string)
}

/// One streaming request through a running opendify, parsed as an OpenAI client would.
async fn measure_via(
    ctx: &Context,
    http: &reqwest::Client,
    base: &str,
    model: &str,
    options: &StreamOptions,
    key: Option<&str>,
    idle: Duration,
) -> Result<StreamRun, ViaError> {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": options.message}],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let mut request = http.post(format!("{base}/v1/chat/completions")).json(&body);
    // In JWT mode serve trusts only a signed token: sign one with the configured secret.
    request = match ctx.config().and_then(|c| c.jwt_secret.as_ref()) {
        Some(secret) => match crate::conversations::identity::sign_user_token(secret, &options.user) {
            Ok(token) => request.header(crate::conversations::identity::JWT_HEADER, token),
            Err(e) => {
                return Err(ViaError::Connect(format!("cannot sign a user token with OPENWEBUI_JWT_SECRET: {e}")));
            }
        },
        None => request.header(OPENWEBUI_USER_HEADER, &options.user),
    };
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let started = Instant::now();
    let mut response = match tokio::time::timeout(ctx.step_timeout, request.send()).await {
        Err(_) => return Err(ViaError::Connect(format!("no answer within {}", format_duration(ctx.step_timeout)))),
        Ok(Err(e)) => return Err(ViaError::Connect(crate::dify::error::error_chain(&e))),
        Ok(Ok(response)) => response,
    };
    let mut run = StreamRun::started(started.elapsed());
    // The echo is percent-encoded beyond ASCII.
    run.resolved_user = response
        .headers()
        .get(RESOLVED_USER_HEADER)
        .map(|v| percent_encoding::percent_decode(v.as_bytes()).decode_utf8_lossy().into_owned());
    let status = response.status().as_u16();
    if status != 200 {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let error = &body["error"];
        return Err(ViaError::Status {
            status,
            message: error["message"].as_str().unwrap_or("(no message)").to_string(),
            code: error["code"].as_str().map(str::to_string),
        });
    }
    let mut clock = Clock::new(started);
    let mut parser = SseParser::default();
    let mut done = false;
    let mut error_code: Option<String> = None;
    'read: loop {
        let chunk = match tokio::time::timeout(idle, response.chunk()).await {
            Err(_) => {
                run.error = Some(format!("nothing arrived for {}", format_duration(idle)));
                break;
            }
            Ok(Err(e)) => {
                run.error = Some(crate::dify::error::error_chain(&e));
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        parser.feed(&chunk);
        while let Ok(Some(event)) = parser.next_event() {
            clock.tick(&mut run);
            ctx.progress.set(format!("{ID}: {} events in {}", run.events, format_duration(started.elapsed())));
            if event.data == "[DONE]" {
                done = true;
                break 'read;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else { continue };
            if let Some(error) = chunk.get("error") {
                run.error = Some(error["message"].as_str().unwrap_or("(no message)").to_string());
                error_code = error["code"].as_str().map(str::to_string);
                continue;
            }
            if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                run.usage = serde_json::from_value(usage.clone()).ok();
            }
            let choice = &chunk["choices"][0];
            for field in ["content", "reasoning_content"] {
                if let Some(text) = choice["delta"][field].as_str() {
                    run.answer_chars += text.chars().count();
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                run.finish_reason = Some(reason.to_string());
            }
        }
    }
    run.total = started.elapsed();
    run.ended = match (&run.error, done, &run.finish_reason) {
        (None, true, Some(_)) => Ended::Finished,
        (Some(_), _, _) if error_code.as_deref() == Some("upstream_stream_cut") => Ended::Cut,
        (Some(_), true, _) => Ended::Error,
        _ => Ended::Cut,
    };
    if run.ended == Ended::Cut && run.error.is_none() {
        run.error = Some("the response ended without [DONE]".into());
    }
    Ok(run)
}

/// Turns a measured stream into the check's verdict.
fn judge(
    result: &mut CheckResult,
    run: Result<StreamRun, DifyError>,
    model: &str,
    via: Option<(&str, UserSent)>,
    user: &str,
    idle: Duration,
    dify_base: &str,
) {
    let sent = via.map(|(_, sent)| sent);
    let via = via.map(|(base, _)| base);
    let mut details = Details {
        model: Some(model.to_string()),
        via: via.map(str::to_string),
        user_sent: user.to_string(),
        ..Details::empty(&StreamOptions::default())
    };
    let target = match via {
        Some(via) => format!("through opendify at {via}"),
        None => "directly to Dify".to_string(),
    };
    let run = match run {
        Ok(run) => run,
        Err(error) => {
            result.summary(format!("`{model}`: the stream did not start"));
            details.error = Some(error.to_string());
            result.push(explain(&error, model, dify_base));
            result.details(details);
            return;
        }
    };
    let generating = run.total.saturating_sub(run.first_event.unwrap_or_default());
    let tokens_per_s = run
        .usage
        .filter(|u| u.completion_tokens > 0 && generating > Duration::from_millis(1))
        .map(|u| (u.completion_tokens as f64 / generating.as_secs_f64() * 10.0).round() / 10.0);
    let gap_stats = gaps(&run.gaps);
    result.line(format!("sent `{model}` {target} as user `{user}`"));
    result.line(format!(
        "first event after {}, {} events ({} keep-alives), total {}",
        run.first_event.map(format_duration).unwrap_or_else(|| "-".into()),
        run.events,
        run.keep_alives,
        format_duration(run.total)
    ));
    if let (Some(p50), Some(p95), Some(max)) = (gap_stats.p50, gap_stats.p95, gap_stats.max) {
        result.line(format!("gaps between events: p50 {p50} ms, p95 {p95} ms, max {max} ms"));
    }
    result.line(match run.usage {
        Some(u) => format!(
            "usage: {} prompt + {} completion tokens{}",
            u.prompt_tokens,
            u.completion_tokens,
            tokens_per_s.map(|t| format!(", {t} tokens/s")).unwrap_or_default()
        ),
        None => "usage: not sent".to_string(),
    });

    match run.ended {
        Ended::Finished => {
            result.summary(format!(
                "`{model}` {target}: {} events, first after {}, ended properly{}",
                run.events,
                run.first_event.map(format_duration).unwrap_or_else(|| "-".into()),
                if run.usage.is_some() { ", usage sent" } else { "" }
            ));
        }
        Ended::Cut => {
            result.summary(format!("`{model}` {target}: the stream was cut after {} events", run.events));
            result.network_fail(Finding::with_fix(format!(
                    "the stream was cut after {} events and {}: {}",
                    run.events,
                    format_duration(run.total),
                    run.error.as_deref().unwrap_or("no closing event")
                ), "something between opendify and Dify ends long responses: check reverse-proxy read timeouts (nginx proxy_read_timeout, Cloudflare's 100 s) and STREAM_IDLE_TIMEOUT; compare with `opendify doctor ping-dify --count 20`"));
        }
        Ended::Error => {
            result.summary(format!("`{model}` {target}: Dify reported an error mid-stream"));
            result.fail(Finding::with_fix(
                format!("the stream ended with an error: {}", run.error.as_deref().unwrap_or("(no message)")),
                "check the app's model provider, quota and logs in Dify",
            ));
        }
    }
    if run.ended == Ended::Finished {
        if let Some(first) = run.first_event.filter(|f| *f > Duration::from_secs(10)) {
            result.warn(Finding::with_fix(
                format!("the first event took {} (problem 12: slow responses)", format_duration(first)),
                "the app's model is slow to start: check its provider in Dify, or knowledge-base retrieval settings",
            ));
        }
        if let Some(max) = run.gaps.iter().max().filter(|m| **m > idle / 2) {
            result.warn(Finding::with_fix(
                format!(
                    "a gap of {} between events is close to STREAM_IDLE_TIMEOUT ({})",
                    format_duration(*max),
                    format_duration(idle)
                ),
                "raise STREAM_IDLE_TIMEOUT (e.g. STREAM_IDLE_TIMEOUT=120) so slow steps are not cut",
            ));
        }
    }
    if let Some(sent) = sent {
        match run.resolved_user.as_deref() {
            Some(resolved) if resolved == user => result.line(format!("user: opendify resolved `{resolved}` from {}", sent.header())),
            Some(resolved) if sent == UserSent::Jwt => result.fail(Finding::with_fix(format!("opendify resolved the user as `{resolved}`, not `{user}` signed into {}", sent.header()), "check that the server runs with the same OPENWEBUI_JWT_SECRET as this configuration")),
            Some(resolved) => result.fail(Finding::with_fix(format!("opendify resolved the user as `{resolved}`, not `{user}` sent in {OPENWEBUI_USER_HEADER} (problem 8: everyone is {resolved})"), "on the server, set USER_ID_HEADER=x-openwebui-user-id (the default) and restart it; in Open WebUI set ENABLE_FORWARD_USER_INFO_HEADERS=true so it sends the header")),
            None => result.warn(Finding::with_fix("the server did not say which user it resolved (no X-Opendify-User header)", "is it opendify, and a current version? check the --via URL")),
        };
    }
    details.user_resolved = run.resolved_user.clone();
    details.time_to_headers_ms = Some(millis(run.headers));
    details.time_to_first_event_ms = run.first_event.map(millis);
    details.events = run.events;
    details.keep_alives = run.keep_alives;
    details.gaps_ms = gap_stats;
    details.total_ms = Some(millis(run.total));
    details.tokens_per_s = tokens_per_s;
    details.usage = run.usage;
    details.ended = Some(run.ended);
    details.finish_reason = run.finish_reason.clone();
    details.answer_chars = run.answer_chars;
    details.error = run.error.clone();
    result.details(details);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_percentiles_are_nearest_rank() {
        let list: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let g = gaps(&list);
        assert_eq!((g.p50, g.p95, g.max), (Some(10.0), Some(19.0), Some(20.0)));
        assert_eq!(gaps(&[]).max, None);
        let one = gaps(&[Duration::from_millis(7)]);
        assert_eq!((one.p50, one.p95, one.max), (Some(7.0), Some(7.0), Some(7.0)));
    }

    #[test]
    fn loopback_hosts_skip_proxies() {
        assert!(is_loopback("localhost"));
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("dify.example.com"));
    }
}

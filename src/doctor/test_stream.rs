//! `test-stream [MODEL] [--via URL]` (the guide's problems 7, 8 and 12: cut streams, every
//! user showing up as default_user, slow answers): one streaming request, timed. Directly to
//! Dify it goes through serve's own request building and event translation, so "ended
//! properly" means what serve means by it; `--via` sends it through a running opendify like
//! Open WebUI would, with `X-OpenWebUI-User-Id`, and checks which user the server resolved
//! (its `X-Opendify-User` header). `--api responses|messages` sends it in that client API
//! (through `--via`, or the configured SERVER_HOST:SERVER_PORT) and reads the stream as that
//! API's SDK does. The request is measured into a [`StreamRun`] first; [`judge`] then turns
//! it into the verdict without any I/O.

use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Serialize;
use serde_json::{Value, json};

use super::context::{Context, Facts, Progress};
use super::probe::{self, Clock, Ended, StreamRun, Usage, explain};
use super::report::{CheckResult, Issue, format_duration, millis};
use crate::cli::TestApi;
use crate::config::{Config, ModelSpec};
use crate::conversations::identity;
use crate::dify::error::error_chain;
use crate::dify::sse::SseParser;
use crate::dify::{DifyClient, DifyError};
use crate::finding::Finding;
use crate::secret::Secret;

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
    pub api: TestApi,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            model: None,
            via: None,
            message: "Say hello in five words.".into(),
            user: "opendify-doctor".into(),
            api: TestApi::Chat,
        }
    }
}

#[derive(Debug, Serialize)]
struct Details {
    model: Option<String>,
    via: Option<String>,
    /// `chat`, `responses` or `messages`.
    api: &'static str,
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
            api: api_name(options.api),
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

fn api_name(api: TestApi) -> &'static str {
    match api {
        TestApi::Chat => "chat",
        TestApi::Responses => "responses",
        TestApi::Messages => "messages",
    }
}

pub(crate) async fn run(ctx: &Context, options: &StreamOptions, facts: &Facts) -> CheckResult {
    let mut result = match (&options.via, options.api) {
        (Some(via), _) => run_via(ctx, options, via).await,
        (None, TestApi::Chat) => run_direct(ctx, options, facts).await,
        // Only opendify speaks the other APIs: go through the one this configuration serves.
        (None, api) => match ctx.require_config(ID).map(served_at) {
            Err(result) => *result,
            Ok(Some(url)) => run_via(ctx, options, &url).await,
            Ok(None) => stopped(
                format!("no opendify to send the {} request to", api_name(api)),
                Issue::fail(Finding::with_fix(
                    "only opendify speaks this API: give the URL of a running one",
                    format!(
                        "`opendify doctor test-stream --api {} --via http://HOST:PORT`, or fix the configuration so SERVER_HOST and SERVER_PORT name it",
                        api_name(api)
                    ),
                )),
            ),
        },
    };
    // Every outcome carries the same detail keys, even when the request never started.
    if !result.is_skipped() && !result.has_details() {
        result.details(Details::empty(options));
    }
    result
}

/// The opendify this configuration serves, as a client on this machine reaches it.
fn served_at(config: &Config) -> Option<Url> {
    let host = super::check_port::local_target(&config.host);
    Url::parse(&format!("http://{host}:{}", config.port)).ok()
}

/// A check that ended before a stream could be measured.
fn stopped(summary: impl Into<String>, issue: Issue) -> CheckResult {
    let mut result = CheckResult::new(ID);
    result.summary(summary);
    result.push(issue);
    result
}

async fn run_direct(ctx: &Context, options: &StreamOptions, facts: &Facts) -> CheckResult {
    let (config, client) = match ctx.dify(ID, facts) {
        Ok(found) => found,
        Err(result) => return *result,
    };
    let Some(spec) = pick_model(config, options.model.as_deref(), &client).await else {
        let names: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
        let wanted = options.model.as_deref().unwrap_or("");
        return stopped(
            "no such model",
            Issue::fail(Finding::with_fix(
                format!("no model named `{wanted}` is configured (configured: {})", names.join(", ")),
                "use a model name from MODEL_CONFIG; `opendify doctor check-config` lists them",
            )),
        );
    };
    if facts.failed_models.contains(&spec.name) {
        return CheckResult::skipped(ID, format!("skipped: the key of `{}` failed (see test-key)", spec.name));
    }
    let route = crate::bridge::apps::describe(&client, &spec).await;
    let target = Target { model: &spec.name, api: TestApi::Chat, via: None, user: &options.user };
    match probe::measure_direct(&ctx.progress, ID, config, &client, &route, &options.message, &options.user).await {
        Ok(run) => judge(&target, &run, ctx.doctor_config(config).stream_idle_timeout),
        Err(error) => not_started(&target, &error, &config.dify_api_base),
    }
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
            return Some(ModelSpec::new(name, key.clone()));
        }
    }
    None
}

async fn run_via(ctx: &Context, options: &StreamOptions, url: &Url) -> CheckResult {
    let via = match Via::new(ctx, url) {
        Ok(via) => via,
        Err(e) => return stopped("cannot build an HTTP client", Issue::fail(Finding::new(e.to_string()))),
    };
    let base = &via.base;
    let model = match &options.model {
        Some(model) => Some(model.clone()),
        None => via.first_model(ctx.step_timeout).await,
    };
    let Some(model) = model else {
        return stopped(
            format!("no model to test at {base}"),
            Issue::network_fail(Finding::with_fix(
                format!("{base}/v1/models did not name a model"),
                format!(
                    "is `opendify serve` running at {base}? name the model: `opendify doctor test-stream MODEL --via {base}`"
                ),
            )),
        );
    };
    let idle = ctx.config().map(|c| ctx.doctor_config(c).stream_idle_timeout).unwrap_or(Duration::from_secs(60));
    match via.measure(&ctx.progress, &model, options, ctx.step_timeout, idle).await {
        Ok(run) => judge(
            &Target { model: &model, api: options.api, via: Some((base, via.sent())), user: &options.user },
            &run,
            idle,
        ),
        Err(error) => via_refused(base, &model, via.jwt_secret.is_some(), error),
    }
}

/// Why a request through opendify could not start.
#[derive(Debug)]
enum ViaError {
    Connect(String),
    Status { status: u16, message: String, code: Option<String> },
}

/// The verdict on a request that opendify did not take: which setting to align, by its
/// status and error code.
fn via_refused(base: &str, model: &str, jwt: bool, error: ViaError) -> CheckResult {
    let (status, message, code) = match error {
        ViaError::Connect(reason) => {
            return stopped(
                format!("cannot reach opendify at {base}"),
                Issue::network_fail(Finding::with_fix(
                    format!("cannot connect to {base}: {reason}"),
                    "is `opendify serve` running there? `opendify doctor check-port` on that machine tells",
                )),
            );
        }
        ViaError::Status { status, message, code } => (status, message, code),
    };
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
        (404, Some("model_not_found" | "not_found_error")) => format!("`{model}` is not served there: name one from {base}/v1/models"),
        (404, _) => format!("{base} does not look like opendify: check the --via URL"),
        _ => "see the message; `opendify doctor test-key` on the server machine tests the keys".to_string(),
    };
    stopped(
        format!("{base} answered HTTP {status}"),
        Issue::fail(Finding::with_fix(
            format!("opendify at {base} refused the request (HTTP {status}): {message}"),
            fix,
        )),
    )
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A running opendify to send the message through, as Open WebUI would.
struct Via {
    http: reqwest::Client,
    /// Its base URL, without `/v1`.
    base: String,
    /// The first of PROXY_API_KEYS: a server configured alike wants it.
    key: Option<Secret>,
    /// OPENWEBUI_JWT_SECRET: serve then trusts only a signed user token.
    jwt_secret: Option<Secret>,
}

impl Via {
    fn new(ctx: &Context, url: &Url) -> reqwest::Result<Via> {
        let base = url.as_str().trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base).to_string();
        let mut builder = reqwest::Client::builder().connect_timeout(ctx.step_timeout);
        if url.host_str().is_some_and(is_loopback) {
            builder = builder.no_proxy();
        }
        Ok(Via {
            http: builder.build()?,
            base,
            key: ctx.config().and_then(|c| c.proxy_api_keys.first().cloned()),
            jwt_secret: ctx.config().and_then(|c| c.jwt_secret.clone()),
        })
    }

    fn sent(&self) -> UserSent {
        if self.jwt_secret.is_some() { UserSent::Jwt } else { UserSent::Header }
    }

    async fn first_model(&self, timeout: Duration) -> Option<String> {
        let mut request = self.http.get(format!("{}/v1/models", self.base)).timeout(timeout);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key.expose());
        }
        let body: Value = request.send().await.ok()?.json().await.ok()?;
        body["data"].get(0)?["id"].as_str().map(str::to_string)
    }

    /// The streaming request in the API tested, with the user as this server expects it.
    fn request(&self, model: &str, options: &StreamOptions) -> Result<reqwest::RequestBuilder, ViaError> {
        let message = &options.message;
        let (path, body) = match options.api {
            TestApi::Chat => (
                "chat/completions",
                json!({
                    "model": model,
                    "messages": [{"role": "user", "content": message}],
                    "stream": true,
                    "stream_options": {"include_usage": true},
                }),
            ),
            TestApi::Responses => ("responses", json!({"model": model, "input": message, "stream": true})),
            TestApi::Messages => (
                "messages",
                json!({
                    "model": model,
                    "max_tokens": 1024,
                    "messages": [{"role": "user", "content": message}],
                    "stream": true,
                }),
            ),
        };
        let mut request = self.http.post(format!("{}/v1/{path}", self.base)).json(&body);
        if options.api == TestApi::Messages {
            request = request.header("anthropic-version", "2023-06-01");
        }
        // In JWT mode serve trusts only a signed token: sign one with the configured secret.
        request = match &self.jwt_secret {
            Some(secret) => match identity::sign_user_token(secret, &options.user) {
                Ok(token) => request.header(identity::JWT_HEADER, token),
                Err(e) => {
                    return Err(ViaError::Connect(format!("cannot sign a user token with OPENWEBUI_JWT_SECRET: {e}")));
                }
            },
            None => request.header(OPENWEBUI_USER_HEADER, &options.user),
        };
        // Each API's SDK sends the key its own way.
        request = match (&self.key, options.api) {
            (Some(key), TestApi::Messages) => request.header("x-api-key", key.expose()),
            (Some(key), _) => request.bearer_auth(key.expose()),
            (None, _) => request,
        };
        Ok(request)
    }

    /// One streaming request, read as an OpenAI client reads it.
    async fn measure(
        &self,
        progress: &Progress,
        model: &str,
        options: &StreamOptions,
        step_timeout: Duration,
        idle: Duration,
    ) -> Result<StreamRun, ViaError> {
        let request = self.request(model, options)?;
        let started = Instant::now();
        let mut response = match tokio::time::timeout(step_timeout, request.send()).await {
            Err(_) => return Err(ViaError::Connect(format!("no answer within {}", format_duration(step_timeout)))),
            Ok(Err(e)) => return Err(ViaError::Connect(error_chain(&e))),
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
                // Anthropic's errors carry a type, not a code.
                code: error["code"].as_str().or(error["type"].as_str()).map(str::to_string),
            });
        }
        let mut clock = Clock::new(started);
        let end = read_events(options.api, &mut response, &mut run, &mut clock, idle, |run| {
            progress.set(format!("{ID}: {} events in {}", run.events, format_duration(started.elapsed())));
        })
        .await;
        run.total = started.elapsed();
        record_end(options.api, &mut run, &end);
        Ok(run)
    }
}

/// How reading a stream stopped.
#[derive(Debug, Default)]
struct StreamEnd {
    /// The API's closing event arrived: `data: [DONE]`, `response.completed`, `message_stop`.
    done: bool,
    /// The `code` of an error chunk.
    error_code: Option<String>,
}

/// Reads the stream of the API tested until its closing event, the end of the body, a network
/// error or `idle` without a byte; each event is timed, the answer and usage are counted.
async fn read_events(
    api: TestApi,
    response: &mut reqwest::Response,
    run: &mut StreamRun,
    clock: &mut Clock,
    idle: Duration,
    mut on_event: impl FnMut(&StreamRun),
) -> StreamEnd {
    let mut parser = SseParser::default();
    let mut end = StreamEnd::default();
    loop {
        let chunk = match tokio::time::timeout(idle, response.chunk()).await {
            Err(_) => {
                run.error = Some(format!("nothing arrived for {}", format_duration(idle)));
                return end;
            }
            Ok(Err(e)) => {
                run.error = Some(error_chain(&e));
                return end;
            }
            Ok(Ok(None)) => return end,
            Ok(Ok(Some(chunk))) => chunk,
        };
        parser.feed(&chunk);
        while let Ok(Some(event)) = parser.next_event() {
            clock.tick(run);
            on_event(run);
            if api == TestApi::Chat && event.data == "[DONE]" {
                end.done = true;
                return end;
            }
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                let start: String = event.data.chars().take(80).collect();
                run.error = Some(format!("an event that is not JSON: {start}"));
                return end;
            };
            match api {
                TestApi::Chat => read_chunk(&data, run, &mut end),
                TestApi::Responses => read_response_event(&data, run, &mut end),
                TestApi::Messages => read_message_event(&data, run, &mut end),
            }
            if end.done && api != TestApi::Chat {
                return end;
            }
        }
    }
}

/// One Chat Completions chunk: an error, usage, answer text, a finish reason.
fn read_chunk(chunk: &Value, run: &mut StreamRun, end: &mut StreamEnd) {
    if let Some(error) = chunk.get("error") {
        run.error = Some(error["message"].as_str().unwrap_or("(no message)").to_string());
        end.error_code = error["code"].as_str().map(str::to_string);
        return;
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

/// One Responses API event (`type` in the data): text deltas, the final response with its
/// usage and status, failures.
fn read_response_event(event: &Value, run: &mut StreamRun, end: &mut StreamEnd) {
    match event["type"].as_str().unwrap_or_default() {
        "response.output_text.delta" | "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => {
            run.answer_chars += event["delta"].as_str().map_or(0, |t| t.chars().count());
        }
        "response.completed" | "response.incomplete" => {
            let response = &event["response"];
            let usage = &response["usage"];
            if usage.is_object() {
                let count = |field: &str| usage[field].as_u64().unwrap_or_default();
                run.usage = Some(Usage {
                    prompt_tokens: count("input_tokens"),
                    completion_tokens: count("output_tokens"),
                    total_tokens: count("total_tokens"),
                });
            }
            let reason = response["incomplete_details"]["reason"].as_str();
            run.finish_reason = Some(reason.or(response["status"].as_str()).unwrap_or("completed").to_string());
            end.done = true;
        }
        "response.failed" => {
            let error = &event["response"]["error"];
            run.error = Some(error["message"].as_str().unwrap_or("(no message)").to_string());
            end.error_code = error["code"].as_str().map(str::to_string);
            end.done = true;
        }
        "error" => {
            // Sent before `response.failed`, which ends the stream.
            run.error = Some(event["message"].as_str().unwrap_or("(no message)").to_string());
            end.error_code = event["code"].as_str().map(str::to_string);
        }
        _ => {}
    }
}

/// One Anthropic Messages event: text and thinking deltas, usage from `message_start` and
/// `message_delta`, the stop reason, `message_stop`, errors.
fn read_message_event(event: &Value, run: &mut StreamRun, end: &mut StreamEnd) {
    match event["type"].as_str().unwrap_or_default() {
        "message_start" => {
            let input = event["message"]["usage"]["input_tokens"].as_u64().unwrap_or_default();
            run.usage = Some(Usage { prompt_tokens: input, completion_tokens: 0, total_tokens: input });
        }
        "content_block_delta" => {
            let delta = &event["delta"];
            let text = delta["text"].as_str().or(delta["thinking"].as_str());
            run.answer_chars += text.map_or(0, |t| t.chars().count());
        }
        "message_delta" => {
            if let Some(reason) = event["delta"]["stop_reason"].as_str() {
                run.finish_reason = Some(reason.to_string());
            }
            if let Some(output) = event["usage"]["output_tokens"].as_u64() {
                // The final input count comes here when it was not known at `message_start`.
                let started = run.usage.map(|u| u.prompt_tokens).unwrap_or_default();
                let input = event["usage"]["input_tokens"].as_u64().unwrap_or(started);
                run.usage =
                    Some(Usage { prompt_tokens: input, completion_tokens: output, total_tokens: input + output });
            }
        }
        "message_stop" => end.done = true,
        "error" => {
            let error = &event["error"];
            run.error = Some(error["message"].as_str().unwrap_or("(no message)").to_string());
            end.error_code = error["type"].as_str().map(str::to_string);
            end.done = true;
        }
        _ => {}
    }
}

/// How a stream through opendify ended: properly only with a finish reason and the API's
/// closing event.
fn record_end(api: TestApi, run: &mut StreamRun, end: &StreamEnd) {
    run.ended = match (&run.error, end.done, &run.finish_reason) {
        (None, true, Some(_)) => Ended::Finished,
        (Some(_), _, _) if end.error_code.as_deref() == Some("upstream_stream_cut") => Ended::Cut,
        (Some(_), true, _) => Ended::Error,
        _ => Ended::Cut,
    };
    if run.ended == Ended::Cut && run.error.is_none() {
        let closing = match api {
            TestApi::Chat => "[DONE]",
            TestApi::Responses => "response.completed",
            TestApi::Messages => "message_stop",
        };
        run.error = Some(format!("the response ended without {closing}"));
    }
}

/// What was sent, where, and as whom: what a verdict says besides the measurements.
struct Target<'a> {
    model: &'a str,
    api: TestApi,
    /// `--via`: the opendify it went through, and how the user was sent to it.
    via: Option<(&'a str, UserSent)>,
    user: &'a str,
}

impl Target<'_> {
    /// "directly to Dify" or "through opendify at URL".
    fn path(&self) -> String {
        match self.via {
            Some((via, _)) => match self.api {
                TestApi::Chat => format!("through opendify at {via}"),
                TestApi::Responses => format!("through opendify at {via} (Responses API)"),
                TestApi::Messages => format!("through opendify at {via} (Anthropic Messages API)"),
            },
            None => "directly to Dify".to_string(),
        }
    }

    /// The details before anything is measured.
    fn details(&self) -> Details {
        Details {
            model: Some(self.model.to_string()),
            via: self.via.map(|(via, _)| via.to_string()),
            api: api_name(self.api),
            user_sent: self.user.to_string(),
            ..Details::empty(&StreamOptions::default())
        }
    }
}

/// The verdict when Dify refused the stream or could not be reached.
fn not_started(target: &Target, error: &DifyError, dify_base: &str) -> CheckResult {
    let mut result =
        stopped(format!("`{}`: the stream did not start", target.model), explain(error, target.model, dify_base));
    result.details(Details { error: Some(error.to_string()), ..target.details() });
    result
}

/// Figures derived from a run, shown in lines and details alike.
struct Derived {
    gaps: Gaps,
    tokens_per_s: Option<f64>,
}

impl Derived {
    fn of(run: &StreamRun) -> Derived {
        let generating = run.total.saturating_sub(run.first_event.unwrap_or_default());
        let tokens_per_s = run
            .usage
            .filter(|u| u.completion_tokens > 0 && generating > Duration::from_millis(1))
            .map(|u| (u.completion_tokens as f64 / generating.as_secs_f64() * 10.0).round() / 10.0);
        Derived { gaps: gaps(&run.gaps), tokens_per_s }
    }
}

/// Turns a measured stream into the check's verdict. Pure: the same run and target give
/// the same result.
fn judge(target: &Target, run: &StreamRun, idle: Duration) -> CheckResult {
    let mut result = CheckResult::new(ID);
    let derived = Derived::of(run);
    describe_run(&mut result, target, run, &derived);
    judge_end(&mut result, target, run);
    if run.ended == Ended::Finished {
        judge_pace(&mut result, run, idle);
    }
    if let Some((_, sent)) = target.via {
        judge_user(&mut result, target.user, sent, run.resolved_user.as_deref());
    }
    result.details(details(target, run, derived));
    result
}

/// The detail lines: what was sent, the timings, the usage.
fn describe_run(result: &mut CheckResult, target: &Target, run: &StreamRun, derived: &Derived) {
    result.line(format!("sent `{}` {} as user `{}`", target.model, target.path(), target.user));
    result.line(format!(
        "first event after {}, {} events ({} keep-alives), total {}",
        run.first_event.map(format_duration).unwrap_or_else(|| "-".into()),
        run.events,
        run.keep_alives,
        format_duration(run.total)
    ));
    if let (Some(p50), Some(p95), Some(max)) = (derived.gaps.p50, derived.gaps.p95, derived.gaps.max) {
        result.line(format!("gaps between events: p50 {p50} ms, p95 {p95} ms, max {max} ms"));
    }
    result.line(match run.usage {
        Some(u) => format!(
            "usage: {} prompt + {} completion tokens{}",
            u.prompt_tokens,
            u.completion_tokens,
            derived.tokens_per_s.map(|t| format!(", {t} tokens/s")).unwrap_or_default()
        ),
        None => "usage: not sent".to_string(),
    });
}

/// The summary, and the problem when the stream did not end properly.
fn judge_end(result: &mut CheckResult, target: &Target, run: &StreamRun) {
    let (model, path) = (target.model, target.path());
    match run.ended {
        Ended::Finished => {
            result.summary(format!(
                "`{model}` {path}: {} events, first after {}, ended properly{}",
                run.events,
                run.first_event.map(format_duration).unwrap_or_else(|| "-".into()),
                if run.usage.is_some() { ", usage sent" } else { "" }
            ));
        }
        Ended::Cut => {
            result.summary(format!("`{model}` {path}: the stream was cut after {} events", run.events));
            result.network_fail(Finding::with_fix(
                format!(
                    "the stream was cut after {} events and {}: {}",
                    run.events,
                    format_duration(run.total),
                    run.error.as_deref().unwrap_or("no closing event")
                ),
                "something between opendify and Dify ends long responses: check reverse-proxy read timeouts (nginx proxy_read_timeout, Cloudflare's 100 s) and STREAM_IDLE_TIMEOUT; compare with `opendify doctor ping-dify --count 20`",
            ));
        }
        Ended::Error => {
            result.summary(format!("`{model}` {path}: Dify reported an error mid-stream"));
            result.fail(Finding::with_fix(
                format!("the stream ended with an error: {}", run.error.as_deref().unwrap_or("(no message)")),
                "check the app's model provider, quota and logs in Dify",
            ));
        }
    }
}

/// Warnings about a stream that ended properly but slowly (the guide's problem 12).
fn judge_pace(result: &mut CheckResult, run: &StreamRun, idle: Duration) {
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

/// `--via`: whether opendify resolved the user that was sent (the guide's problem 8).
fn judge_user(result: &mut CheckResult, user: &str, sent: UserSent, resolved: Option<&str>) {
    match resolved {
        Some(resolved) if resolved == user => {
            result.line(format!("user: opendify resolved `{resolved}` from {}", sent.header()));
        }
        Some(resolved) if sent == UserSent::Jwt => {
            result.fail(Finding::with_fix(
                format!("opendify resolved the user as `{resolved}`, not `{user}` signed into {}", sent.header()),
                "check that the server runs with the same OPENWEBUI_JWT_SECRET as this configuration",
            ));
        }
        Some(resolved) => {
            result.fail(Finding::with_fix(
                format!(
                    "opendify resolved the user as `{resolved}`, not `{user}` sent in {OPENWEBUI_USER_HEADER} (problem 8: everyone is {resolved})"
                ),
                "on the server, set USER_ID_HEADER=x-openwebui-user-id (the default) and restart it; in Open WebUI set ENABLE_FORWARD_USER_INFO_HEADERS=true so it sends the header",
            ));
        }
        None => {
            result.warn(Finding::with_fix(
                "the server did not say which user it resolved (no X-Opendify-User header)",
                "is it opendify, and a current version? check the --via URL",
            ));
        }
    }
}

fn details(target: &Target, run: &StreamRun, derived: Derived) -> Details {
    Details {
        user_resolved: run.resolved_user.clone(),
        time_to_headers_ms: Some(millis(run.headers)),
        time_to_first_event_ms: run.first_event.map(millis),
        events: run.events,
        keep_alives: run.keep_alives,
        gaps_ms: derived.gaps,
        total_ms: Some(millis(run.total)),
        tokens_per_s: derived.tokens_per_s,
        usage: run.usage,
        ended: Some(run.ended),
        finish_reason: run.finish_reason.clone(),
        answer_chars: run.answer_chars,
        error: run.error.clone(),
        ..target.details()
    }
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

    fn finished(first: Duration, gaps: Vec<Duration>) -> StreamRun {
        let mut run = StreamRun::started(Duration::from_millis(5));
        run.first_event = Some(first);
        run.events = gaps.len() as u64 + 1;
        run.total = first + gaps.iter().sum::<Duration>();
        run.gaps = gaps;
        run.ended = Ended::Finished;
        run.finish_reason = Some("stop".into());
        run
    }

    #[test]
    fn a_measured_run_is_judged_without_io() {
        let direct = Target { model: "chat", api: TestApi::Chat, via: None, user: "opendify-doctor" };
        let idle = Duration::from_secs(60);
        let quick = judge(&direct, &finished(Duration::from_millis(80), vec![Duration::from_millis(3)]), idle);
        assert!(quick.issues.is_empty(), "{quick:?}");
        assert!(quick.summary.contains("ended properly"), "{}", quick.summary);

        let slow = judge(&direct, &finished(Duration::from_secs(12), vec![Duration::from_secs(40)]), idle);
        let reasons: Vec<&str> = slow.issues.iter().map(|i| i.finding.message.as_str()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("problem 12") && reasons[1].contains("STREAM_IDLE_TIMEOUT"), "{reasons:?}");

        let mut cut = finished(Duration::from_millis(80), vec![]);
        cut.ended = Ended::Cut;
        let verdict = judge(&direct, &cut, idle);
        assert!(verdict.issues[0].network, "a cut stream is a network failure: {verdict:?}");

        let via = Target {
            model: "chat",
            api: TestApi::Chat,
            via: Some(("http://127.0.0.1:5000", UserSent::Header)),
            user: "u1",
        };
        let mut run = finished(Duration::from_millis(80), vec![]);
        run.resolved_user = Some("default_user".into());
        let deaf = judge(&via, &run, idle);
        assert!(deaf.issues[0].finding.message.contains("everyone is default_user"), "{deaf:?}");
    }

    #[test]
    fn loopback_hosts_skip_proxies() {
        assert!(is_loopback("localhost"));
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("dify.example.com"));
    }
}

//! The probes that test-key and test-stream share, so that neither check depends on the
//! other: how a failed Dify call is explained to a person ([`explain`]: a problem, its fix,
//! whether the network caused it), and one streamed message straight to Dify, measured
//! event by event ([`measure_direct`], giving a [`StreamRun`]) through serve's own request
//! building and event translation, so "ended properly" means what serve means by it.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::context::Progress;
use super::report::{Issue, format_duration};
use crate::bridge::request::{self, BuildOptions, ConversationPlan};
use crate::bridge::{AppRoute, Collected, Message, Outcome, ProgressMode, Role, Translator, TranslatorOptions, Turn};
use crate::config::Config;
use crate::dify::{DifyClient, DifyError, EventStream, GenerateRequest};
use crate::finding::Finding;

/// Why a call for `model` failed and what to do, by the error's kind.
pub(crate) fn explain(error: &DifyError, model: &str, base: &str) -> Issue {
    let make = |reason: String, fix: &str, network: bool| {
        let finding = Finding::with_fix(reason, fix);
        if network { Issue::network_fail(finding) } else { Issue::fail(finding) }
    };
    match error {
        DifyError::Unauthorized { message, .. } => make(
            format!("Dify rejected the key of model `{model}` (401: {message})"),
            "get a valid key in Dify: open the app > API Access > API Key (create one if needed), and put it in MODEL_CONFIG",
            false,
        ),
        DifyError::Api { code, message, .. } if code == "app_unavailable" || code == "not_chat_app" => make(
            format!("the app of model `{model}` is unavailable ({code}: {message})"),
            "open the app in Dify, check its model settings and click Publish; a draft app cannot answer the API",
            false,
        ),
        DifyError::Api { status: 404, .. } | DifyError::Http { status: 404, .. } => make(
            format!("Dify answered 404 for model `{model}`: {base} is not Dify's service API ({error})"),
            "DIFY_API_BASE must end in /v1, e.g. https://api.dify.ai/v1 or http://your-dify-host/v1",
            false,
        ),
        // Not worth failing for.
        DifyError::Api { status: 429, message, .. } => Issue::warn(Finding::with_fix(
            format!("Dify rate-limited the test of model `{model}`: {message}"),
            "wait a minute and retry; check the app's rate limits in Dify",
        )),
        DifyError::Api { status, code, message } if *status >= 500 => make(
            format!("Dify failed answering for model `{model}` (HTTP {status}, {code}): {message}"),
            "Dify itself has a problem: check its api container logs (`docker compose logs api`)",
            true,
        ),
        DifyError::Api { status, code, message } => make(
            format!("Dify refused the request for model `{model}` (HTTP {status}, {code}): {message}"),
            "check the app's settings in Dify",
            false,
        ),
        DifyError::Http { status, body } => make(
            format!("{base} answered HTTP {status} with {body}, not Dify's JSON"),
            "DIFY_API_BASE must point at Dify's service API (…/v1), not the web console or another server",
            *status >= 500,
        ),
        DifyError::Connect { .. } | DifyError::Timeout(_) | DifyError::Idle(_) | DifyError::Transport(_) => make(
            format!("cannot reach Dify for model `{model}`: {error}"),
            "run `opendify doctor ping-dify` to find the broken layer (DNS, TCP, TLS, HTTP)",
            true,
        ),
        DifyError::TooLarge { .. } => make(
            format!("Dify's answer for model `{model}` is not what Dify sends: {error}"),
            "DIFY_API_BASE must point at Dify's service API (…/v1)",
            false,
        ),
        DifyError::Protocol(detail) => make(
            format!("Dify's answer for model `{model}` is not what Dify sends: {detail}"),
            "DIFY_API_BASE must point at Dify's service API (…/v1)",
            false,
        ),
        DifyError::Request(detail) => make(
            format!("the request for model `{model}` cannot be sent: {detail}"),
            "check the key in MODEL_CONFIG for spaces, quotes or line breaks",
            false,
        ),
    }
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Ended {
    /// With Dify's closing event (or `[DONE]` after a finish reason).
    Finished,
    /// The connection closed or went silent before the end.
    Cut,
    /// An error frame.
    Error,
}

/// What one streaming request looked like, as measured; judging it is the caller's part.
#[derive(Debug, Clone)]
pub(crate) struct StreamRun {
    /// Until the response headers.
    pub headers: Duration,
    pub first_event: Option<Duration>,
    pub events: u64,
    pub keep_alives: u64,
    pub gaps: Vec<Duration>,
    pub total: Duration,
    pub usage: Option<Usage>,
    pub ended: Ended,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
    pub answer_chars: usize,
    /// `--via`: the user opendify resolved, from its response header.
    pub resolved_user: Option<String>,
}

impl StreamRun {
    /// A run whose response headers arrived after `headers`, nothing read yet.
    pub fn started(headers: Duration) -> Self {
        StreamRun {
            headers,
            first_event: None,
            events: 0,
            keep_alives: 0,
            gaps: Vec::new(),
            total: Duration::ZERO,
            usage: None,
            ended: Ended::Cut,
            finish_reason: None,
            error: None,
            answer_chars: 0,
            resolved_user: None,
        }
    }
}

/// Times events as they arrive.
pub(crate) struct Clock {
    started: Instant,
    last: Option<Instant>,
}

impl Clock {
    pub fn new(started: Instant) -> Self {
        Clock { started, last: None }
    }

    pub fn tick(&mut self, run: &mut StreamRun) {
        let now = Instant::now();
        match self.last {
            None => run.first_event = Some(now - self.started),
            Some(last) => run.gaps.push(now - last),
        }
        self.last = Some(now);
        run.events += 1;
    }
}

/// Token counts as the checks report them (`details.usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

impl From<&crate::bridge::Usage> for Usage {
    fn from(u: &crate::bridge::Usage) -> Self {
        Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.total_tokens }
    }
}

/// One streaming generation straight to Dify, built and translated by serve's own code.
/// `label` names the check on the progress line.
pub(crate) async fn measure_direct(
    progress: &Progress,
    label: &str,
    config: &Config,
    client: &DifyClient,
    route: &AppRoute,
    message: &str,
    user: &str,
) -> Result<StreamRun, DifyError> {
    let generate = one_message(config, route, message, user);
    let started = Instant::now();
    let mut stream = client.generate(&route.key, route.mode, &generate).await?;
    let mut run = StreamRun::started(started.elapsed());
    let mut translator = Translator::new(TranslatorOptions {
        mode: route.mode,
        model: route.name.clone(),
        reasoning: config.reasoning_mode,
        progress: ProgressMode::Off,
        output: route.output.clone(),
    });
    let mut sink = Collected::default();
    let mut clock = Clock::new(started);
    let broke = translate_events(&mut stream, &mut translator, &mut sink, &mut run, &mut clock, |run| {
        progress.set(format!("{label}: {} events in {}", run.events, format_duration(started.elapsed())));
    })
    .await;
    run.total = started.elapsed();
    run.answer_chars = sink.answer().chars().count() + sink.reasoning.chars().count();
    record_outcome(&mut run, translator.outcome(), broke.as_ref());
    Ok(run)
}

/// The request serve would send for a new conversation whose only message is `message`.
fn one_message(config: &Config, route: &AppRoute, message: &str, user: &str) -> GenerateRequest {
    let turn = Turn {
        model: route.name.clone(),
        messages: vec![Message::text(Role::User, message, "messages[0]")],
        stream: true,
        ..Turn::default()
    };
    let options = BuildOptions { user, system_input: config.system_input.as_deref(), sections: &[], instead: None };
    let plan = ConversationPlan { seed_from: Some(0), ..ConversationPlan::default() };
    request::build(&turn, route, &plan, Vec::new(), &options)
}

/// Feeds Dify's events to the translator, timing each, until the translator is done or
/// the stream ends; returns the error that broke the stream, if one did.
async fn translate_events(
    stream: &mut EventStream,
    translator: &mut Translator,
    sink: &mut Collected,
    run: &mut StreamRun,
    clock: &mut Clock,
    mut on_event: impl FnMut(&StreamRun),
) -> Option<DifyError> {
    loop {
        match stream.next().await {
            Some(Ok(event)) => {
                clock.tick(run);
                if event.is_ping() {
                    run.keep_alives += 1;
                }
                translator.on_event(&event, sink);
                on_event(run);
                if translator.is_done() {
                    return None;
                }
            }
            Some(Err(error)) => {
                translator.on_end(Some(&error), sink);
                return Some(error);
            }
            None => {
                translator.on_end(None, sink);
                return None;
            }
        }
    }
}

/// How the stream ended, in the translator's (and so serve's) terms.
fn record_outcome(run: &mut StreamRun, outcome: &Outcome, broke: Option<&DifyError>) {
    match outcome {
        Outcome::Finished { reason, usage } => {
            run.ended = Ended::Finished;
            run.finish_reason = Some(crate::api::chat::finish_reason(*reason).to_string());
            run.usage = usage.as_ref().map(Usage::from);
        }
        Outcome::Failed { error, .. } => {
            let cut = error.code.as_deref() == Some("upstream_stream_cut")
                || matches!(broke, Some(DifyError::Transport(_) | DifyError::Idle(_)));
            run.ended = if cut { Ended::Cut } else { Ended::Error };
            run.error = Some(error.message.clone());
        }
        Outcome::Running => {
            run.ended = Ended::Cut;
            run.error = Some("the stream ended without an outcome".into());
        }
    }
}

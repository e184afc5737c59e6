//! Structured output: `response_format` (`json_object`, `json_schema`). A Dify app takes no
//! response format, so the query says what shape to answer in, and the answer is cleaned
//! (Markdown fences and prose around the JSON removed) and checked (it must parse, and with
//! a schema it must validate) before the client takes it as success. A streamed answer goes
//! out as it comes, holding back only what may be a fence or prose around the JSON; a
//! collected one can be asked for again when it fails (see `server::exchange`).

use serde_json::Value;

use super::error::ApiError;
use super::events::{FinishReason, Sink, Usage};
use super::turn::OutputFormat;

/// What the query says about the answer's shape.
pub fn section(format: &OutputFormat) -> Option<String> {
    match format {
        OutputFormat::Text => None,
        OutputFormat::JsonObject => Some(
            "[Answer format]\nAnswer with one JSON object and nothing else: no Markdown code fence, no text before or after it."
                .to_string(),
        ),
        OutputFormat::JsonSchema { name, schema, .. } => Some(format!(
            "[Answer format]\nAnswer with one JSON value and nothing else (no Markdown code fence, no text before or after \
             it), valid against this JSON Schema named `{name}`:\n{schema}"
        )),
    }
}

/// What to say when asking again, after an answer that did not have the shape.
pub fn retry_note(problem: &str) -> String {
    format!(
        "Your previous answer was not what was asked for: {problem}. Answer again with only the JSON, nothing else."
    )
}

/// The JSON inside an answer: without a Markdown fence, and without prose before the first
/// `{`/`[` or after the last `}`/`]`.
pub fn clean(answer: &str) -> &str {
    let start = answer.find(['{', '[']);
    let end = answer.rfind(['}', ']']);
    match (start, end) {
        (Some(start), Some(end)) if start <= end => &answer[start..=end],
        _ => answer.trim(),
    }
}

/// Checks a cleaned answer against the format; `Err` says what is wrong, for the client (or
/// for the model, when asked again).
pub fn check(answer: &str, format: &OutputFormat) -> Result<(), String> {
    let value: Value = serde_json::from_str(answer)
        .map_err(|e| format!("the answer is not valid JSON ({})", crate::json_text::reason(&e)))?;
    match format {
        OutputFormat::Text => Ok(()),
        OutputFormat::JsonObject if value.is_object() => Ok(()),
        OutputFormat::JsonObject => {
            Err(format!("the answer is {}, not a JSON object", crate::json_text::kind_of(&value)))
        }
        OutputFormat::JsonSchema { schema, name, .. } => {
            let validator = jsonschema::validator_for(schema)
                .map_err(|e| format!("the schema `{name}` cannot be used for validation: {e}"))?;
            let problems: Vec<String> = validator
                .iter_errors(&value)
                .take(3)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() { e.to_string() } else { format!("{e} (at {at})") }
                })
                .collect();
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!("the answer does not match the schema `{name}`: {}", problems.join("; ")))
            }
        }
    }
}

/// The error a client gets when the answer still does not have the shape it asked for.
pub fn invalid_answer(problem: &str, model: &str) -> ApiError {
    ApiError::server(
        axum::http::StatusCode::BAD_GATEWAY,
        format!("Model `{model}` did not produce the requested response_format: {problem}"),
    )
    .code("invalid_structured_output")
    .not_retryable()
}

/// Cleans a streamed JSON answer as it passes, and judges it at the end.
pub struct JsonAnswer {
    format: OutputFormat,
    model: String,
    /// The JSON has begun (its first `{` or `[` was seen).
    begun: bool,
    /// Text after the latest `}`/`]`: sent once more JSON follows, dropped at the end.
    tail: String,
    /// Everything sent, to check at the end.
    sent: String,
    /// Why the answer was refused, once it was.
    pub refused: Option<String>,
}

impl JsonAnswer {
    pub fn new(format: OutputFormat, model: &str) -> Self {
        JsonAnswer {
            format,
            model: model.to_string(),
            begun: false,
            tail: String::new(),
            sent: String::new(),
            refused: None,
        }
    }

    pub fn text(&mut self, text: &str, out: &mut impl Sink) {
        let mut text = text;
        if !self.begun {
            // Prose or a fence before the JSON is not part of it.
            match text.find(['{', '[']) {
                Some(at) => {
                    self.begun = true;
                    text = &text[at..];
                }
                None => return,
            }
        }
        self.tail.push_str(text);
        if let Some(end) = self.tail.rfind(['}', ']']) {
            let ready: String = self.tail.drain(..=end).collect();
            self.sent.push_str(&ready);
            out.text(&ready);
        }
    }

    /// The answer is over: a valid one finishes, anything else fails with the reason.
    pub fn finish(&mut self, out: &mut impl Sink, reason: FinishReason, usage: Option<&Usage>) {
        match check(&self.sent, &self.format) {
            Ok(()) => out.finish(reason, usage),
            Err(problem) => {
                out.fail(&invalid_answer(&problem, &self.model));
                self.refused = Some(problem);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::events::Collected;
    use serde_json::json;

    fn schema() -> OutputFormat {
        OutputFormat::JsonSchema {
            name: "weather".into(),
            schema: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            strict: true,
        }
    }

    #[test]
    fn fences_and_prose_around_the_json_are_removed() {
        assert_eq!(clean("```json\n{\"a\": 1}\n```"), "{\"a\": 1}");
        assert_eq!(clean("Here you go: [1, 2] Hope it helps!"), "[1, 2]");
        assert_eq!(clean("no json at all"), "no json at all");
    }

    #[test]
    fn answers_are_checked_against_the_format() {
        assert!(check("{\"city\": \"Oslo\"}", &schema()).is_ok());
        let missing = check("{\"town\": \"Oslo\"}", &schema()).expect_err("missing city");
        assert!(missing.contains("city"), "{missing}");
        assert!(check("not json", &OutputFormat::JsonObject).expect_err("not json").contains("not valid JSON"));
        assert!(check("[1]", &OutputFormat::JsonObject).expect_err("an array").contains("not a JSON object"));
    }

    #[test]
    fn a_streamed_answer_holds_back_only_the_fence_and_fails_when_invalid() {
        let mut stage = JsonAnswer::new(schema(), "m");
        let mut out = Collected::default();
        for piece in ["```js", "on\n{\"ci", "ty\": \"Oslo\"", "}\n``", "`"] {
            stage.text(piece, &mut out);
        }
        stage.finish(&mut out, FinishReason::Stop, None);
        assert_eq!(out.content, "{\"city\": \"Oslo\"}");
        assert!(stage.refused.is_none());

        let mut stage = JsonAnswer::new(schema(), "m");
        let mut out = Collected::default();
        stage.text("{\"town\": \"Oslo\"}", &mut out);
        stage.finish(&mut out, FinishReason::Stop, None);
        assert!(stage.refused.as_deref().is_some_and(|p| p.contains("schema")));
    }
}

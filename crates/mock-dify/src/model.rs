//! What the mock answers when a query asks more of a model than an echo: it follows
//! opendify's tool instructions (calls the tool the message is about, in the Hermes/Qwen
//! block, remembering the definitions sent earlier in the conversation, as a model's memory
//! would) and its answer-format instructions (JSON built from the schema, wrapped in a
//! Markdown fence and a sentence of prose, as models often do). Deterministic, so tests and
//! SDK end-to-end runs can assert on it.

use serde_json::{Map, Value, json};

/// The answer, when the query (or the conversation's earlier queries, for the tool
/// definitions) calls for more than an echo; `None` leaves the echo.
pub fn answer(query: &str, earlier: &[String]) -> Option<String> {
    let current = current_message(query);
    if current.contains("<tool_response>") {
        return Some(tool_results(current));
    }
    if let Some(format) = section(query, "[Answer format]") {
        // Asked again: the question is the one before (a model remembers it).
        let asked = match (query.contains("was not what was asked for"), earlier.last()) {
            (true, Some(before)) => current_message(before),
            _ => current,
        };
        return Some(json_answer(format, asked, query));
    }
    let definitions = section(query, "[Tools]").or_else(|| earlier.iter().rev().find_map(|q| section(q, "[Tools]")))?;
    let tools = tool_list(definitions)?;
    let forced = section(query, "[Tool use]");
    if current.contains("[[mock:bad-call]]") {
        return Some("<tool_call>{not json}</tool_call>".into());
    }
    let mentioned: Vec<&Value> = tools.iter().filter(|t| mentions(current, name_of(t))).collect();
    let chosen: Vec<&Value> = match (mentioned.is_empty(), forced) {
        (false, _) => mentioned,
        (true, Some(forced)) => {
            // `Answer with a <tool_call> block calling the tool `x` now.`, or any tool.
            let named = forced.split('`').nth(1);
            tools.iter().filter(|t| named.is_none_or(|n| name_of(t) == n)).take(1).collect()
        }
        (true, None) => return None,
    };
    let one_only = definitions.contains("Call at most one tool") || !current.contains("[[mock:parallel]]");
    let calls: Vec<String> = chosen
        .iter()
        .take(if one_only { 1 } else { usize::MAX })
        .map(|tool| {
            let call = json!({"name": name_of(tool), "arguments": arguments(tool, current)});
            format!("<tool_call>\n{call}\n</tool_call>")
        })
        .collect();
    let lead = if current.contains("[[mock:text-then-call]]") { "Let me look that up.\n" } else { "" };
    Some(format!("{lead}{}", calls.join("\n")))
}

/// The client's message inside a framed query (`[Current message]`), or the whole query.
fn current_message(query: &str) -> &str {
    query.rsplit_once("[Current message]\n").map_or(query, |(_, current)| current)
}

/// The text of a `[Heading]` section, up to the next section.
fn section<'a>(query: &'a str, heading: &str) -> Option<&'a str> {
    let start = query.find(heading)? + heading.len();
    let rest = &query[start..];
    let end = rest.find("\n\n[").unwrap_or(rest.len());
    Some(&rest[..end])
}

fn tool_list(definitions: &str) -> Option<Vec<Value>> {
    let start = definitions.find("\n[")? + 1;
    serde_json::from_str::<Vec<Value>>(definitions[start..].trim()).ok()
}

fn name_of(tool: &Value) -> &str {
    tool.get("name").and_then(Value::as_str).unwrap_or("")
}

/// A message is about a tool when it names it, or a word of its name (`weather` for
/// `get_weather`), leaving out verbs every tool name starts with.
fn mentions(message: &str, name: &str) -> bool {
    let lower = message.to_lowercase();
    lower.contains(&name.to_lowercase())
        || name
            .split(['_', '-'])
            .filter(|w| w.len() > 3 && !matches!(*w, "get" | "set" | "list" | "search" | "find" | "fetch"))
            .any(|w| lower.contains(&w.to_lowercase()))
}

/// Arguments for a tool's schema, from the message: a place name for `city`/`location`, the
/// first number for numbers, something sensible for the rest.
fn arguments(tool: &Value, message: &str) -> Value {
    let schema = tool.get("parameters").cloned().unwrap_or(Value::Null);
    let mut args = Map::new();
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            args.insert(name.clone(), sample(name, property, message));
        }
    }
    Value::Object(args)
}

fn sample(name: &str, schema: &Value, message: &str) -> Value {
    if let Some(choices) = schema.get("enum").and_then(Value::as_array).and_then(|c| c.first()) {
        return choices.clone();
    }
    match schema.get("type").and_then(Value::as_str).unwrap_or("string") {
        "number" | "integer" => {
            let number = message.split(|c: char| !c.is_ascii_digit()).find(|w| !w.is_empty());
            json!(number.and_then(|n| n.parse::<i64>().ok()).unwrap_or(42))
        }
        "boolean" => json!(true),
        "array" => json!([]),
        "object" => {
            let mut object = Map::new();
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (inner, property) in properties {
                    object.insert(inner.clone(), sample(inner, property, message));
                }
            }
            Value::Object(object)
        }
        _ => {
            // A capitalised word of the message (past its first word, directives aside) reads
            // as a name or place.
            let words = message.split("]]").last().unwrap_or(message);
            let proper = words
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .skip(1)
                .find(|w| w.chars().next().is_some_and(char::is_uppercase) && w.len() > 1);
            json!(match (name, proper) {
                (_, Some(word)) => word.to_string(),
                _ => format!("example {name}"),
            })
        }
    }
}

/// The answer to tool results: what each tool said.
fn tool_results(message: &str) -> String {
    let results: Vec<String> = message
        .split("<tool_response>")
        .skip(1)
        .filter_map(|block| block.split("</tool_response>").next())
        .filter_map(|block| serde_json::from_str::<Value>(block.trim()).ok())
        .map(|r| {
            let name = r.get("name").and_then(Value::as_str).unwrap_or("tool");
            let content = r.get("content").and_then(Value::as_str).unwrap_or("");
            format!("{name} said {content}")
        })
        .collect();
    format!("The tools answered: {}.", results.join("; "))
}

/// JSON in the requested shape, fenced and with prose around it; or, on request, wrong.
fn json_answer(format: &str, message: &str, query: &str) -> String {
    let asked_again = query.contains("was not what was asked for");
    let wrong = message.contains("[[mock:json-invalid-always]]")
        || (message.contains("[[mock:json-invalid-once]]") && !asked_again);
    if wrong {
        return "Sure! ```json\n{\"unexpected\": true}\n```".into();
    }
    let schema = format.split_once(":\n").and_then(|(_, s)| serde_json::from_str::<Value>(s.trim()).ok());
    let value = match schema {
        Some(schema) => sample("value", &schema, message),
        None => json!({"answer": format!("Echo: {}", message.trim())}),
    };
    format!("Here is the JSON you asked for:\n```json\n{value}\n```\nAnything else?")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOLS: &str = "[Tools]\nYou can call the tools below.\nTools (the arguments as JSON Schema):\n[{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}}]";

    #[test]
    fn the_mock_calls_the_tool_the_message_is_about() {
        let query = format!("{TOOLS}\n\n[Current message]\nWhat's the weather in Oslo?");
        let answer = answer(&query, &[]).expect("a call");
        assert_eq!(answer, "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}\n</tool_call>");
        // The definitions were sent earlier in the conversation: remembered.
        assert!(answer_for_later("And the weather in Paris?").contains("Paris"));
        assert_eq!(super::answer("What's the weather in Rome?", &[]), None, "no tools, no call");
    }

    fn answer_for_later(message: &str) -> String {
        answer(message, &[format!("{TOOLS}\n\n[Current message]\nhi")]).expect("a call")
    }

    #[test]
    fn the_mock_answers_json_from_the_schema() {
        let query = "[Answer format]\nAnswer with one JSON value … named `w`:\n{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},\"temp\":{\"type\":\"number\"}}}\n\n[Current message]\nWeather in Oslo, 12 degrees";
        let text = answer(query, &[]).expect("json");
        assert!(text.contains("{\"city\":\"Oslo\",\"temp\":12}"), "{text}");
    }
}

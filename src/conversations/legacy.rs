//! Reads `data/conversation_mappings.json` of the original Python proxy. Its exact layout
//! varied between versions, so the common shapes are accepted: `{chat_id: conversation_id}`,
//! `{chat_id: {"conversation_id": …, "user_id": …}}`, the same under a `mappings` key, or a
//! list of such objects.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyMapping {
    pub chat_id: String,
    pub conversation_id: String,
    pub user: Option<String>,
}

pub fn parse(text: &str) -> Result<Vec<LegacyMapping>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let value = match &value {
        Value::Object(o) if o.len() == 1 => match o.get("mappings").or_else(|| o.get("conversations")) {
            Some(inner) => inner.clone(),
            None => value,
        },
        _ => value,
    };
    let mut out = Vec::new();
    match value {
        Value::Object(map) => {
            for (chat_id, v) in map {
                if let Some(m) = entry(Some(chat_id), &v) {
                    out.push(m);
                }
            }
        }
        Value::Array(items) => out.extend(items.iter().filter_map(|v| entry(None, v))),
        _ => return Err("expected a JSON object or list".into()),
    }
    Ok(out)
}

fn entry(key: Option<String>, v: &Value) -> Option<LegacyMapping> {
    let text = |o: &serde_json::Map<String, Value>, names: &[&str]| {
        names.iter().find_map(|n| o.get(*n).and_then(Value::as_str)).map(str::to_string).filter(|s| !s.is_empty())
    };
    match v {
        Value::String(conversation_id) if !conversation_id.is_empty() => {
            Some(LegacyMapping { chat_id: key?, conversation_id: conversation_id.clone(), user: None })
        }
        Value::Object(o) => Some(LegacyMapping {
            chat_id: key.or_else(|| text(o, &["chat_id", "chatId"]))?,
            conversation_id: text(o, &["conversation_id", "conversationId"])?,
            user: text(o, &["user_id", "user", "userId"]),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_shapes() {
        let flat = parse(r#"{"chat-1": "conv-1"}"#).unwrap();
        assert_eq!(
            flat,
            vec![LegacyMapping { chat_id: "chat-1".into(), conversation_id: "conv-1".into(), user: None }]
        );
        let nested = parse(r#"{"mappings": {"c": {"conversation_id": "x", "user_id": "u"}}}"#).unwrap();
        assert_eq!(nested[0].user.as_deref(), Some("u"));
        let list = parse(r#"[{"chat_id": "c", "conversation_id": "x"}, {"bad": 1}]"#).unwrap();
        assert_eq!(list.len(), 1);
        assert!(parse("nope").is_err());
    }
}

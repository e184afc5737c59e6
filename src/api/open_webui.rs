//! Open WebUI's extensions to the Chat Completions stream, for the requests that get them
//! (OPENWEBUI_EVENTS): a chunk with a top-level `event` object is handed to Open WebUI's event
//! emitter as is (`status` lines above the answer, saved as the message's `statusHistory`;
//! `source` events, saved as its `sources`), and `usage` in a chunk is shown on the message.
//! Open WebUI adds up every usage it is sent, so usage goes in exactly one chunk.

use serde_json::{Value, json};

use crate::bridge::{Citation, Usage};

/// A status line: what the app is doing now, or (`done`) what it did.
pub fn status(description: &str, done: bool) -> Value {
    json!({"type": "status", "data": {"description": description, "done": done, "hidden": false}})
}

/// One `source` event per document, its passages grouped in the order Dify reported them:
/// Open WebUI shows each document once, with every passage the answer drew on.
pub fn sources(citations: &[Citation]) -> Vec<Value> {
    let mut documents: Vec<(&Citation, Vec<&Citation>)> = Vec::new();
    for citation in citations {
        let key = |c: &Citation| (c.document_id.clone(), c.document.clone());
        match documents.iter_mut().find(|(first, _)| key(first) == key(citation)) {
            Some((_, passages)) => passages.push(citation),
            None => documents.push((citation, vec![citation])),
        }
    }
    documents
        .into_iter()
        .map(|(first, passages)| {
            let name = if first.document.is_empty() { "Knowledge base" } else { first.document.as_str() };
            let metadata: Vec<Value> = passages
                .iter()
                .map(|c| {
                    json!({"source": name, "name": name, "dataset": c.dataset, "score": c.score,
                           "position": c.position, "segment_id": c.segment_id, "document_id": c.document_id})
                })
                .collect();
            let mut data = json!({
                "source": {"id": first.document_id.as_deref().unwrap_or(name), "name": name},
                "document": passages.iter().map(|c| c.content.as_str()).collect::<Vec<_>>(),
                "metadata": metadata,
            });
            // Open WebUI shows a relevance bar when every passage has a score.
            let scores: Option<Vec<f64>> = passages.iter().map(|c| c.score).collect();
            if let Some(scores) = scores {
                data["distances"] = json!(scores);
            }
            json!({"type": "source", "data": data})
        })
        .collect()
}

/// Usage as Open WebUI reads it, with Dify's price and currency under `price` when reported.
pub fn usage(usage: &Usage) -> Value {
    let mut body = json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    });
    if let Some((total, currency)) = &usage.price {
        body["price"] = json!({"total": total, "currency": currency});
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(document: &str, content: &str, score: Option<f64>) -> Citation {
        Citation {
            document: document.into(),
            document_id: Some(format!("id-{document}")),
            dataset: Some("Handbook".into()),
            content: content.into(),
            score,
            position: None,
            segment_id: None,
            raw: Value::Null,
        }
    }

    #[test]
    fn passages_of_one_document_are_one_source() {
        let events = sources(&[
            passage("leave.pdf", "a", Some(0.9)),
            passage("pay.pdf", "b", None),
            passage("leave.pdf", "c", Some(0.7)),
        ]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["data"]["document"], json!(["a", "c"]));
        assert_eq!(events[0]["data"]["distances"], json!([0.9, 0.7]));
        assert_eq!(events[0]["data"]["source"]["name"], "leave.pdf");
        assert_eq!(events[1]["data"]["metadata"][0]["dataset"], "Handbook");
        assert!(events[1]["data"].get("distances").is_none(), "no partial scores");
    }
}

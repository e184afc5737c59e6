//! `GET /v1/models` and `GET /v1/models/{id}`: the configured models, in OpenAI's shape, or
//! in Anthropic's (paged, with `display_name` and `created_at`) for Anthropic's clients.

use serde::Serialize;

use crate::bridge::ApiError;

#[derive(Debug, Serialize)]
pub struct ModelObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

impl<'a> ModelObject<'a> {
    pub fn new(id: &'a str, created: u64) -> Self {
        ModelObject { id, object: "model", created, owned_by: "dify" }
    }
}

#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelObject<'a>>,
}

impl<'a> ModelList<'a> {
    pub fn new(names: impl IntoIterator<Item = &'a str>, created: u64) -> Self {
        ModelList { object: "list", data: names.into_iter().map(|id| ModelObject::new(id, created)).collect() }
    }
}

/// A model in Anthropic's shape (`GET /v1/models` with an `anthropic-version` header).
#[derive(Debug, Serialize)]
pub struct ModelInfo<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    pub display_name: &'a str,
    /// RFC 3339: when this server started, as for OpenAI's `created`.
    pub created_at: String,
}

impl<'a> ModelInfo<'a> {
    /// `display_name`: the Dify app's name when known, else the model's.
    pub fn new(id: &'a str, display_name: Option<&'a str>, created: u64) -> Self {
        ModelInfo {
            kind: "model",
            id,
            display_name: display_name.filter(|n| !n.trim().is_empty()).unwrap_or(id),
            created_at: super::iso(i64::try_from(created).unwrap_or(i64::MAX)),
        }
    }
}

/// One page of Anthropic's model list.
#[derive(Debug, Serialize)]
pub struct ModelPage<'a> {
    pub data: Vec<ModelInfo<'a>>,
    pub has_more: bool,
    pub first_id: Option<&'a str>,
    pub last_id: Option<&'a str>,
}

/// Anthropic's paging parameters: `limit` (1 to 1000, 20 by default), and `after_id` or
/// `before_id` (a model id the page starts after, or ends before).
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub after_id: Option<String>,
    pub before_id: Option<String>,
}

impl<'a> ModelPage<'a> {
    /// The page of `models` (in configuration order) that `query` asks for.
    pub fn new(models: Vec<ModelInfo<'a>>, query: &PageQuery) -> Result<Self, ApiError> {
        let limit = match &query.limit {
            None => 20,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid_request(format!(
                        "`limit` must be a whole number from 1 to 1000, got {text:?}"
                    ))
                    .param("limit"));
                }
            },
        };
        let position = |id: &str, param: &str| {
            models.iter().position(|m| m.id == id).ok_or_else(|| {
                ApiError::invalid_request(format!("`{param}` names `{id}`, which is not a model here")).param(param)
            })
        };
        let (start, end, more) = match (&query.after_id, &query.before_id) {
            (Some(after), _) => {
                let start = position(after, "after_id")? + 1;
                let end = (start + limit).min(models.len());
                (start, end, end < models.len())
            }
            (None, Some(before)) => {
                let end = position(before, "before_id")?;
                let start = end.saturating_sub(limit);
                (start, end, start > 0)
            }
            (None, None) => (0, limit.min(models.len()), limit < models.len()),
        };
        let data: Vec<ModelInfo<'a>> = models.into_iter().skip(start).take(end - start).collect();
        Ok(ModelPage { first_id: data.first().map(|m| m.id), last_id: data.last().map(|m| m.id), has_more: more, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(query: PageQuery) -> Result<Vec<String>, ApiError> {
        let models = ["a", "b", "c"].into_iter().map(|id| ModelInfo::new(id, None, 0)).collect();
        let page = ModelPage::new(models, &query)?;
        Ok(page.data.iter().map(|m| m.id.to_string()).chain([page.has_more.to_string()]).collect())
    }

    #[test]
    fn anthropic_pages_follow_limit_after_and_before() {
        let q = |limit: Option<&str>, after: Option<&str>, before: Option<&str>| PageQuery {
            limit: limit.map(str::to_string),
            after_id: after.map(str::to_string),
            before_id: before.map(str::to_string),
        };
        assert_eq!(page(q(None, None, None)).unwrap(), ["a", "b", "c", "false"]);
        assert_eq!(page(q(Some("2"), None, None)).unwrap(), ["a", "b", "true"]);
        assert_eq!(page(q(Some("2"), Some("b"), None)).unwrap(), ["c", "false"]);
        assert_eq!(page(q(Some("1"), None, Some("c"))).unwrap(), ["b", "true"]);
        assert_eq!(page(q(Some("0"), None, None)).unwrap_err().param.as_deref(), Some("limit"));
        assert_eq!(page(q(None, Some("zz"), None)).unwrap_err().param.as_deref(), Some("after_id"));
        let info = ModelInfo::new("m", Some("Chat Bot"), 951_782_400);
        assert_eq!((info.display_name, info.created_at.as_str()), ("Chat Bot", "2000-02-29T00:00:00Z"));
    }
}

//! `GET /v1/models` and `GET /v1/models/{id}`: the configured models, in OpenAI's shape.

use serde::Serialize;

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

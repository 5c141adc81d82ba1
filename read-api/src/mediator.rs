//! Mediator reads (seed 002): mediators with their colleagues, and each colleague's inbox,
//! served from the `mediator` projection.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{OpenApi, Tags};
use serde_json::{json, Value};

use kernel::domain::mediator::projection::{
    colleague_key, COLLEAGUES, INBOX, MEDIATORS, PROJECTION_NAME,
};
use kernel::domain::mediator::MessageKind;
use web::{ApiResult, BearerAuth};

use crate::query::{found, query, strip_internal, Page, MAX_LIMIT};
use crate::ReadState;

/// The context name used for token scopes.
const MEDIATOR_SCOPE: &str = kernel::domain::Context::Mediator.as_str();

#[derive(Tags)]
enum ApiTags {
    /// Mediators, the colleagues registered with them, and the messages they pass between
    /// colleagues, directly or by broadcast.
    Mediators,
}

pub struct MediatorReadApi {
    pub state: ReadState,
}

impl MediatorReadApi {
    async fn ready(&self, auth: &BearerAuth, min_position: Option<u64>) -> ApiResult<()> {
        self.state
            .reader_ready(auth, MEDIATOR_SCOPE, PROJECTION_NAME, min_position)
            .await
    }

    /// A mediator's document: 404 when absent, 410 when forgotten.
    async fn mediator(&self, name: &str) -> ApiResult<Value> {
        found(
            self.state.read.get(MEDIATORS, name).await?,
            &format!("mediator {name}"),
        )
    }

    /// Every colleague of a mediator, oldest registration first.
    async fn colleagues(&self, name: &str) -> ApiResult<Vec<Value>> {
        let mut all = Vec::new();
        let mut q = query(Some(MAX_LIMIT), None);
        q.filter = vec![("mediator".into(), json!(name))];
        q.sort = vec![("registered_at".into(), true)];
        loop {
            let page = self.state.read.find(COLLEAGUES, &q).await?;
            let fetched = page.items.len() as u64;
            all.extend(page.items.into_iter().map(colleague_view));
            q.offset += fetched;
            if fetched == 0 || q.offset >= page.total {
                return Ok(all);
            }
        }
    }
}

/// A colleague as clients see it: without the mediator's name, which they know.
fn colleague_view(doc: Value) -> Value {
    let mut doc = strip_internal(doc);
    if let Some(map) = doc.as_object_mut() {
        map.remove("mediator");
    }
    doc
}

/// An inbox entry as clients see it: without the internal `inbox` key.
fn inbox_view(doc: Value) -> Value {
    let mut doc = strip_internal(doc);
    if let Some(map) = doc.as_object_mut() {
        map.remove("inbox");
    }
    doc
}

#[OpenApi(tag = "ApiTags::Mediators")]
impl MediatorReadApi {
    /// List mediators, by name: each with its description, metadata, `colleague_count`,
    /// `message_count` and `version`.
    #[oai(path = "/mediators", method = "get")]
    async fn list_mediators(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Query<
            Option<u32>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Query<
            Option<u64>,
        >,
        /// Wait until the read model has applied this position (read your writes).
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let mut q = query(limit.0, offset.0);
        q.sort = vec![("name".into(), true)];
        let page = self.state.read.find(MEDIATORS, &q).await?;
        Ok(Json(Page::new(page, q.limit, q.offset)))
    }

    /// Get a mediator with its colleagues (`colleagues`: `{id, name, type, registered_at}`,
    /// oldest registration first).
    #[oai(path = "/mediators/:name", method = "get")]
    async fn get_mediator(
        &self,
        auth: BearerAuth,
        name: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        let mut doc = self.mediator(&name.0).await?;
        let colleagues = self.colleagues(&name.0).await?;
        if let Some(map) = doc.as_object_mut() {
            map.insert("colleagues".into(), Value::Array(colleagues));
        }
        Ok(Json(doc))
    }

    /// A colleague's inbox, oldest first: the messages sent to it and the broadcasts of
    /// other colleagues, each with `message_id`, `sender_id`, `kind`, `message`,
    /// `broadcast`, `sent_at` and `sequence`. 404 for an unknown mediator or colleague.
    #[oai(
        path = "/mediators/:name/colleagues/:colleague_id/messages",
        method = "get"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn inbox(
        &self,
        auth: BearerAuth,
        name: Path<String>,
        colleague_id: Path<String>,
        /// Only messages of this kind (one of the ten).
        kind: Query<Option<String>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Query<
            Option<u32>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Query<
            Option<u64>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        self.mediator(&name.0).await?;
        let key = colleague_key(&name.0, &colleague_id.0);
        found(
            self.state.read.get(COLLEAGUES, &key).await?,
            &format!("colleague {} of mediator {}", colleague_id.0, name.0),
        )?;
        let mut q = query(limit.0, offset.0);
        q.filter = vec![("inbox".into(), json!(key))];
        if let Some(kind) = kind.0 {
            let kind = MessageKind::parse(&kind)?;
            q.filter.push(("kind".into(), json!(kind.as_str())));
        }
        q.sort = vec![("sequence".into(), true)];
        let page = self.state.read.find(INBOX, &q).await?;
        let mut page = Page::new(page, q.limit, q.offset);
        page.items = page.items.into_iter().map(inbox_view).collect();
        Ok(Json(page))
    }
}

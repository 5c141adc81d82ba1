//! Memento routes (seed 000): caretakers keep mementos; originators change state, are
//! captured into caretakers and restored from them (undo).

use std::collections::BTreeMap;

use chrono::Utc;
use poem::Request;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi, Tags};
use serde::Serialize;
use serde_json::Value;

use kernel::domain::memento::{
    Caretaker, CaretakerCommand, Originator, OriginatorCommand, OriginatorKind, CARETAKER,
    ORIGINATOR,
};
use kernel::domain::DomainError;
use kernel::engine::{Engine, UnitOfWork};
use kernel::KernelError;
use web::server::RequestId;
use web::{ApiError, ApiResult, BearerAuth, Role, Text};

use crate::write::{context, Written};
use crate::WriteState;

#[derive(Tags)]
enum ApiTags {
    /// Caretakers and the mementos they keep.
    Mementos,
    /// Originators: objects whose state can be captured and restored.
    Originators,
}

/// The four originator kinds.
#[derive(Debug, Clone, Copy, Enum, Serialize, PartialEq)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum MementoType {
    Document,
    Database,
    File,
    Configuration,
}

impl From<MementoType> for OriginatorKind {
    fn from(kind: MementoType) -> Self {
        match kind {
            MementoType::Document => OriginatorKind::Document,
            MementoType::Database => OriginatorKind::Database,
            MementoType::File => OriginatorKind::File,
            MementoType::Configuration => OriginatorKind::Configuration,
        }
    }
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(deny_unknown_fields)]
pub struct CreateCaretakerRequest {
    /// 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
    pub name: Text,
    /// Defaults to the configured `max_mementos`, which is also the ceiling.
    pub max_mementos: Option<u32>,
    /// Bytes of canonical JSON; defaults to the configured `max_memento_size`.
    pub max_memento_size: Option<u64>,
    /// Defaults to the configured `max_memento_age`.
    pub max_memento_age_secs: Option<u64>,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(deny_unknown_fields)]
pub struct SaveMementoRequest {
    /// Generated when absent.
    pub id: Option<Text>,
    pub originator_id: Text,
    /// The state to keep; its shape depends on `type`.
    pub state: Value,
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: MementoType,
    pub description: Option<Text>,
    pub metadata: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(deny_unknown_fields)]
pub struct CreateOriginatorRequest {
    /// Generated when absent.
    pub id: Option<Text>,
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: MementoType,
    pub name: Text,
    /// Defaults to the kind's empty state.
    pub state: Option<Value>,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(deny_unknown_fields)]
pub struct SetStateRequest {
    pub state: Value,
    /// Optimistic concurrency: the version the change is based on (or send `If-Match`).
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, Object, Serialize)]
#[oai(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The caretaker that keeps the memento.
    pub caretaker: Text,
    /// Generated when absent.
    pub memento_id: Option<Text>,
    pub description: Option<Text>,
    pub metadata: Option<BTreeMap<String, Value>>,
}

pub struct MementoWriteApi {
    pub state: WriteState,
}

fn request_id(req: &Request) -> Option<uuid::Uuid> {
    req.extensions().get::<RequestId>().map(|id| id.0)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn metadata_map(metadata: Option<BTreeMap<String, Value>>) -> serde_json::Map<String, Value> {
    metadata.unwrap_or_default().into_iter().collect()
}

/// `If-Match: "3"`, `If-Match: 3` or `W/"3"` → 3; merged with a body `expected_version`.
fn expected_version(if_match: Option<String>, body: Option<u64>) -> ApiResult<Option<u64>> {
    let header = match if_match {
        None => None,
        Some(raw) => {
            let trimmed = raw.trim().trim_start_matches("W/").trim_matches('"');
            Some(trimmed.parse::<u64>().map_err(|_| {
                ApiError::invalid("If-Match", "must be a version number, such as \"3\"")
            })?)
        }
    };
    match (header, body) {
        (Some(a), Some(b)) if a != b => Err(ApiError::invalid(
            "expected_version",
            "differs from the If-Match header",
        )),
        (header, body) => Ok(header.or(body)),
    }
}

impl MementoWriteApi {
    fn engine(&self) -> &Engine {
        &self.state.engine
    }
}

#[OpenApi(tag = "ApiTags::Mementos")]
impl MementoWriteApi {
    /// Create a caretaker.
    #[oai(path = "/mementos/caretakers", method = "post")]
    async fn create_caretaker(
        &self,
        auth: BearerAuth,
        req: &Request,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: Json<CreateCaretakerRequest>,
    ) -> ApiResult<Written> {
        auth.0.require(Role::Writer)?;
        let ctx = context(
            &auth.0,
            request_id(req),
            idempotency_key.0,
            "POST /mementos/caretakers",
            &body.0,
        )?;
        let name = body.0.name.to_string();
        let at = Utc::now();
        let committed = self
            .engine()
            .execute::<Caretaker, _>(
                &name,
                || CaretakerCommand::CreateCaretaker {
                    name: body.0.name.to_string(),
                    max_mementos: body.0.max_mementos,
                    max_memento_size: body.0.max_memento_size,
                    max_memento_age_secs: body.0.max_memento_age_secs,
                    at,
                },
                &self.state.memento,
                &ctx,
            )
            .await?;
        Ok(Written::from_committed(&committed, CARETAKER, &name, true))
    }

    /// Remove a caretaker and every memento it keeps.
    #[oai(path = "/mementos/caretakers/:name", method = "delete")]
    async fn remove_caretaker(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        auth.0.require(Role::Writer)?;
        let route = format!("DELETE /mementos/caretakers/{}", name.0);
        let ctx = context(&auth.0, request_id(req), idempotency_key.0, &route, &())?;
        let at = Utc::now();
        let committed = self
            .engine()
            .execute::<Caretaker, _>(
                &name.0,
                || CaretakerCommand::RemoveCaretaker { at },
                &self.state.memento,
                &ctx,
            )
            .await?;
        Ok(Written::from_committed(
            &committed, CARETAKER, &name.0, false,
        ))
    }

    /// Save a memento into a caretaker.
    #[oai(path = "/mementos/caretakers/:name/mementos", method = "post")]
    async fn save_memento(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: Json<SaveMementoRequest>,
    ) -> ApiResult<Written> {
        auth.0.require(Role::Writer)?;
        let route = format!("POST /mementos/caretakers/{}/mementos", name.0);
        let ctx = context(&auth.0, request_id(req), idempotency_key.0, &route, &body.0)?;
        let memento_id = body.0.id.clone().map_or_else(new_id, Text::into_string);
        let at = Utc::now();
        let committed = self
            .engine()
            .execute::<Caretaker, _>(
                &name.0,
                || CaretakerCommand::SaveMemento {
                    memento_id: memento_id.clone(),
                    originator_id: body.0.originator_id.to_string(),
                    kind: body.0.kind.into(),
                    state: body.0.state.clone(),
                    description: body.0.description.clone().map(Text::into_string),
                    metadata: metadata_map(body.0.metadata.clone()),
                    at,
                },
                &self.state.memento,
                &ctx,
            )
            .await?;
        Ok(Written::from_committed(
            &committed, CARETAKER, &name.0, true,
        ))
    }

    /// Delete a memento.
    #[oai(path = "/mementos/caretakers/:name/mementos/:id", method = "delete")]
    async fn delete_memento(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        id: Path<String>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        auth.0.require(Role::Writer)?;
        let route = format!("DELETE /mementos/caretakers/{}/mementos/{}", name.0, id.0);
        let ctx = context(&auth.0, request_id(req), idempotency_key.0, &route, &())?;
        let at = Utc::now();
        let committed = self
            .engine()
            .execute::<Caretaker, _>(
                &name.0,
                || CaretakerCommand::DeleteMemento {
                    memento_id: id.0.clone(),
                    at,
                },
                &self.state.memento,
                &ctx,
            )
            .await?;
        Ok(Written::from_committed(
            &committed, CARETAKER, &name.0, false,
        ))
    }

    /// Remove expired mementos, then the oldest while over the caretaker's limit.
    #[oai(path = "/mementos/caretakers/:name/cleanup", method = "post")]
    async fn cleanup(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        auth.0.require(Role::Writer)?;
        let route = format!("POST /mementos/caretakers/{}/cleanup", name.0);
        let ctx = context(&auth.0, request_id(req), idempotency_key.0, &route, &())?;
        let now = Utc::now();
        let committed = self
            .engine()
            .execute::<Caretaker, _>(
                &name.0,
                || CaretakerCommand::Cleanup { now },
                &self.state.memento,
                &ctx,
            )
            .await?;
        Ok(Written::from_committed(
            &committed, CARETAKER, &name.0, false,
        ))
    }

    /// Restore a memento into its originator (undo). `If-Match` guards the originator's
    /// version.
    #[oai(
        path = "/mementos/caretakers/:name/mementos/:id/restore",
        method = "post"
    )]
    async fn restore(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        id: Path<String>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        auth.0.require(Role::Writer)?;
        let expected = expected_version(if_match.0, None)?;
        let route = format!(
            "POST /mementos/caretakers/{}/mementos/{}/restore",
            name.0, id.0
        );
        let ctx = context(
            &auth.0,
            request_id(req),
            idempotency_key.0,
            &route,
            &expected,
        )?;
        let engine = self.engine();
        let policy = &self.state.memento;
        let at = Utc::now();
        let (name, id) = (&name.0, &id.0);
        let committed = engine
            .run(&ctx, || async move {
                let caretaker = engine.load::<Caretaker>(name).await?;
                if !caretaker.state.is_live() {
                    return Err(DomainError::NotFound(format!("caretaker {name}")).into());
                }
                let entry = caretaker
                    .state
                    .memento(id)
                    .cloned()
                    .ok_or_else(|| DomainError::NotFound(format!("memento {id}")))?;
                let restore = OriginatorCommand::RestoreFromMemento {
                    caretaker: name.clone(),
                    memento_id: entry.memento_id.clone(),
                    memento_version: entry.version,
                    kind: entry.kind,
                    state: entry.state.clone(),
                    checksum: entry.checksum.clone(),
                    expected_version: expected,
                    at,
                };
                let originator = engine
                    .decide::<Originator>(&entry.originator_id, restore, policy)
                    .await?;
                let mark = CaretakerCommand::MarkRestored {
                    memento_id: entry.memento_id.clone(),
                    originator_id: entry.originator_id.clone(),
                    at,
                };
                let caretaker = Engine::decide_on(name, caretaker, mark, policy).await?;
                let mut uow = UnitOfWork::new();
                uow.push::<Caretaker>(caretaker)?;
                uow.push::<Originator>(originator)?;
                Ok::<_, KernelError>(uow)
            })
            .await?;
        let originator_id = committed
            .streams
            .iter()
            .find(|stream| stream.aggregate_type == ORIGINATOR)
            .map(|stream| stream.aggregate_id.clone())
            .unwrap_or_default();
        Ok(Written::from_committed(
            &committed,
            ORIGINATOR,
            &originator_id,
            false,
        ))
    }

    /// Create an originator.
    #[oai(path = "/originators", method = "post", tag = "ApiTags::Originators")]
    async fn create_originator(
        &self,
        auth: BearerAuth,
        req: &Request,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: Json<CreateOriginatorRequest>,
    ) -> ApiResult<Written> {
        auth.0.require(Role::Writer)?;
        let ctx = context(
            &auth.0,
            request_id(req),
            idempotency_key.0,
            "POST /originators",
            &body.0,
        )?;
        let id = body.0.id.clone().map_or_else(new_id, Text::into_string);
        let at = Utc::now();
        let committed = self
            .engine()
            .execute::<Originator, _>(
                &id,
                || OriginatorCommand::CreateOriginator {
                    id: id.clone(),
                    kind: body.0.kind.into(),
                    name: body.0.name.to_string(),
                    state: body.0.state.clone(),
                    at,
                },
                &self.state.memento,
                &ctx,
            )
            .await?;
        Ok(Written::from_committed(&committed, ORIGINATOR, &id, true))
    }

    /// Change an originator's state.
    #[oai(
        path = "/originators/:id/state",
        method = "put",
        tag = "ApiTags::Originators"
    )]
    async fn set_state(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: Json<SetStateRequest>,
    ) -> ApiResult<Written> {
        auth.0.require(Role::Writer)?;
        let expected = expected_version(if_match.0, body.0.expected_version)?;
        let route = format!("PUT /originators/{}/state", id.0);
        let ctx = context(
            &auth.0,
            request_id(req),
            idempotency_key.0,
            &route,
            &(&body.0, expected),
        )?;
        let at = Utc::now();
        let committed = self
            .engine()
            .execute::<Originator, _>(
                &id.0,
                || OriginatorCommand::SetState {
                    state: body.0.state.clone(),
                    expected_version: expected,
                    at,
                },
                &self.state.memento,
                &ctx,
            )
            .await?;
        Ok(Written::from_committed(
            &committed, ORIGINATOR, &id.0, false,
        ))
    }

    /// Capture an originator's current state as a memento in a caretaker.
    #[oai(
        path = "/originators/:id/mementos",
        method = "post",
        tag = "ApiTags::Originators"
    )]
    async fn capture(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: Json<CaptureRequest>,
    ) -> ApiResult<Written> {
        auth.0.require(Role::Writer)?;
        let route = format!("POST /originators/{}/mementos", id.0);
        let ctx = context(&auth.0, request_id(req), idempotency_key.0, &route, &body.0)?;
        let memento_id = body
            .0
            .memento_id
            .clone()
            .map_or_else(new_id, Text::into_string);
        let engine = self.engine();
        let policy = &self.state.memento;
        let at = Utc::now();
        let committed = engine
            .run(&ctx, || async {
                let originator = engine.load::<Originator>(&id.0).await?;
                let kind = match (originator.state.is_created(), originator.state.kind()) {
                    (true, Some(kind)) => kind,
                    _ => return Err(DomainError::NotFound(format!("originator {}", id.0)).into()),
                };
                let save = CaretakerCommand::SaveMemento {
                    memento_id: memento_id.clone(),
                    originator_id: id.0.clone(),
                    kind,
                    state: originator.state.state().clone(),
                    description: body.0.description.clone().map(Text::into_string),
                    metadata: metadata_map(body.0.metadata.clone()),
                    at,
                };
                let mut uow = UnitOfWork::new();
                uow.push::<Caretaker>(engine.decide(&body.0.caretaker, save, policy).await?)?;
                Ok::<_, KernelError>(uow)
            })
            .await?;
        Ok(Written::from_committed(
            &committed,
            CARETAKER,
            &body.0.caretaker,
            true,
        ))
    }
}

//! Memento routes (seed 000): caretakers keep mementos; originators change state, are
//! captured into caretakers and restored from them (undo).

use std::collections::BTreeMap;

use chrono::Utc;
use poem::Request;
use poem_openapi::param::{Header, Path};
use poem_openapi::{Enum, Object, OpenApi, Tags};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use kernel::domain::memento::{
    Caretaker, CaretakerCommand, Originator, OriginatorCommand, OriginatorKind, CARETAKER,
    ORIGINATOR,
};
use kernel::domain::{DomainError, EventSourced};
use kernel::engine::{Engine, UnitOfWork};
use kernel::KernelError;
use web::{ApiResult, BearerAuth, Role, StrictJson, Text};

use crate::write::{
    call, context, execute, expected_version, metadata_map, new_id, request_id, Call, Written,
};
use crate::WriteState;

/// The context name used for token scopes.
const MEMENTO: &str = kernel::domain::Context::Memento.as_str();

#[derive(Tags)]
enum ApiTags {
    /// Caretakers and the mementos they keep.
    Mementos,
    /// Originators: objects whose state can be captured and restored.
    Originators,
}

/// The four originator kinds.
#[derive(Debug, Clone, Copy, Enum, Serialize, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateCaretakerRequest {
    /// 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub name: Text,
    /// Defaults to the configured `max_mementos`, which is also the ceiling.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
    pub max_mementos: Option<u32>,
    /// Bytes of canonical JSON; defaults to the configured `max_memento_size`.
    #[oai(validator(minimum(value = "1"), maximum(value = "1048576")))]
    pub max_memento_size: Option<u64>,
    /// Defaults to the configured `max_memento_age`.
    #[oai(validator(minimum(value = "1"), maximum(value = "86400")))]
    pub max_memento_age_secs: Option<u64>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SaveMementoRequest {
    /// Generated when absent.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub id: Option<Text>,
    #[oai(validator(min_length = 1, max_length = 256))]
    pub originator_id: Text,
    /// The state to keep; its shape depends on `type`.
    pub state: Value,
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: MementoType,
    #[oai(validator(max_length = 1024))]
    pub description: Option<Text>,
    #[oai(validator(max_properties = 64))]
    pub metadata: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateOriginatorRequest {
    /// Generated when absent.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub id: Option<Text>,
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: MementoType,
    #[oai(validator(pattern = r"\S", max_length = 256))]
    pub name: Text,
    /// Defaults to the kind's empty state.
    pub state: Option<Value>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SetStateRequest {
    pub state: Value,
    /// Optimistic concurrency: the version the change is based on (or send `If-Match`).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The caretaker that keeps the memento.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub caretaker: Text,
    /// Generated when absent.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub memento_id: Option<Text>,
    #[oai(validator(max_length = 1024))]
    pub description: Option<Text>,
    #[oai(validator(max_properties = 64))]
    pub metadata: Option<BTreeMap<String, Value>>,
}

pub struct MementoWriteApi {
    pub state: WriteState,
}

impl MementoWriteApi {
    fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// Runs one command on one aggregate for a writer, and answers with what was committed.
    #[allow(clippy::too_many_arguments)]
    async fn execute<A>(
        &self,
        call: Call<'_>,
        route: &str,
        body: &impl Serialize,
        aggregate_id: &str,
        created: bool,
        command: impl Fn() -> A::Command + Send + Sync,
    ) -> ApiResult<Written>
    where
        A: EventSourced<Services = kernel::domain::memento::MementoPolicy>,
        KernelError: From<A::Error>,
    {
        execute::<A>(
            self.engine(),
            &self.state.memento,
            call,
            MEMENTO,
            route,
            body,
            aggregate_id,
            created,
            command,
        )
        .await
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
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<CreateCaretakerRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        self.execute::<Caretaker>(
            call(&auth, req, idempotency_key),
            "POST /mementos/caretakers",
            request,
            &request.name,
            true,
            || CaretakerCommand::CreateCaretaker {
                name: request.name.to_string(),
                max_mementos: request.max_mementos,
                max_memento_size: request.max_memento_size,
                max_memento_age_secs: request.max_memento_age_secs,
                at,
            },
        )
        .await
    }

    /// Remove a caretaker and every memento it keeps.
    #[oai(path = "/mementos/caretakers/:name", method = "delete")]
    async fn remove_caretaker(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        self.execute::<Caretaker>(
            call(&auth, req, idempotency_key),
            &format!("DELETE /mementos/caretakers/{}", name.0),
            &(),
            &name.0,
            false,
            || CaretakerCommand::RemoveCaretaker { at },
        )
        .await
    }

    /// Save a memento into a caretaker.
    #[oai(path = "/mementos/caretakers/:name/mementos", method = "post")]
    async fn save_memento(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<SaveMementoRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let memento_id = request.id.clone().map_or_else(new_id, Text::into_string);
        self.execute::<Caretaker>(
            call(&auth, req, idempotency_key),
            &format!("POST /mementos/caretakers/{}/mementos", name.0),
            request,
            &name.0,
            true,
            || CaretakerCommand::SaveMemento {
                memento_id: memento_id.clone(),
                originator_id: request.originator_id.to_string(),
                kind: request.kind.into(),
                state: request.state.clone(),
                description: request.description.clone().map(Text::into_string),
                metadata: metadata_map(request.metadata.clone()),
                at,
            },
        )
        .await
    }

    /// Delete a memento.
    #[oai(path = "/mementos/caretakers/:name/mementos/:id", method = "delete")]
    async fn delete_memento(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        id: Path<String>,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        self.execute::<Caretaker>(
            call(&auth, req, idempotency_key),
            &format!("DELETE /mementos/caretakers/{}/mementos/{}", name.0, id.0),
            &(),
            &name.0,
            false,
            || CaretakerCommand::DeleteMemento {
                memento_id: id.0.clone(),
                at,
            },
        )
        .await
    }

    /// Remove expired mementos, then the oldest while over the caretaker's limit.
    #[oai(path = "/mementos/caretakers/:name/cleanup", method = "post")]
    async fn cleanup(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        let now = Utc::now();
        self.execute::<Caretaker>(
            call(&auth, req, idempotency_key),
            &format!("POST /mementos/caretakers/{}/cleanup", name.0),
            &(),
            &name.0,
            false,
            || CaretakerCommand::Cleanup { now },
        )
        .await
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
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        auth.0.allow(Role::Writer, MEMENTO)?;
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
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<CreateOriginatorRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let id = request.id.clone().map_or_else(new_id, Text::into_string);
        self.execute::<Originator>(
            call(&auth, req, idempotency_key),
            "POST /originators",
            request,
            &id,
            true,
            || OriginatorCommand::CreateOriginator {
                id: id.clone(),
                kind: request.kind.into(),
                name: request.name.to_string(),
                state: request.state.clone(),
                at,
            },
        )
        .await
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
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<SetStateRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let expected = expected_version(if_match.0, body.0.expected_version)?;
        self.execute::<Originator>(
            call(&auth, req, idempotency_key),
            &format!("PUT /originators/{}/state", id.0),
            &(&body.0, expected),
            &id.0,
            false,
            || OriginatorCommand::SetState {
                state: body.0.state.clone(),
                expected_version: expected,
                at,
            },
        )
        .await
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
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<CaptureRequest>,
    ) -> ApiResult<Written> {
        auth.0.allow(Role::Writer, MEMENTO)?;
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

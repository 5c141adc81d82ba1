//! Memento read routes (seed 000), served from the `memento` projection's read models.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{OpenApi, Tags};
use serde_json::{json, Value};

use kernel::domain::memento::projection::{
    history_doc_id, CARETAKERS, HISTORY, MEMENTOS, ORIGINATORS, PROJECTION_NAME,
};
use web::{ApiError, ApiResult, BearerAuth};

use crate::query::{found, query, Page};
use crate::ReadState;

/// The context name used for token scopes.
const MEMENTO: &str = kernel::domain::Context::Memento.as_str();

#[derive(Tags)]
enum ApiTags {
    /// Caretakers and the mementos they keep.
    Mementos,
    /// Originators, their history and time travel.
    Originators,
}

pub struct MementoReadApi {
    pub state: ReadState,
}

impl MementoReadApi {
    async fn ready(&self, auth: &BearerAuth, min_position: Option<u64>) -> ApiResult<()> {
        self.state
            .reader_ready(auth, MEMENTO, PROJECTION_NAME, min_position)
            .await
    }

    async fn caretaker(&self, name: &str) -> ApiResult<Value> {
        found(
            self.state.read.get(CARETAKERS, name).await?,
            &format!("caretaker {name}"),
        )
    }
}

#[OpenApi(tag = "ApiTags::Mementos")]
impl MementoReadApi {
    /// List caretakers.
    #[oai(path = "/mementos/caretakers", method = "get")]
    async fn list_caretakers(
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
        let page = self.state.read.find(CARETAKERS, &q).await?;
        Ok(Json(Page::new(page, q.limit, q.offset)))
    }

    /// Get a caretaker.
    #[oai(path = "/mementos/caretakers/:name", method = "get")]
    async fn get_caretaker(
        &self,
        auth: BearerAuth,
        name: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        Ok(Json(self.caretaker(&name.0).await?))
    }

    /// List a caretaker's mementos, optionally by originator and type.
    #[oai(path = "/mementos/caretakers/:name/mementos", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list_mementos(
        &self,
        auth: BearerAuth,
        name: Path<String>,
        originator_id: Query<Option<String>>,
        #[oai(name = "type")] kind: Query<Option<String>>,
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
        self.caretaker(&name.0).await?;
        let mut q = query(limit.0, offset.0);
        q.filter.push(("caretaker".into(), json!(name.0)));
        if let Some(originator) = originator_id.0 {
            q.filter.push(("originator_id".into(), json!(originator)));
        }
        if let Some(kind) = kind.0 {
            if !["document", "database", "file", "configuration"].contains(&kind.as_str()) {
                return Err(ApiError::invalid(
                    "type",
                    "must be one of document, database, file, configuration",
                ));
            }
            q.filter.push(("type".into(), json!(kind)));
        }
        q.sort = vec![("created_at".into(), true)];
        let page = self.state.read.find(MEMENTOS, &q).await?;
        Ok(Json(Page::new(page, q.limit, q.offset)))
    }

    /// Get one memento, with its state.
    #[oai(path = "/mementos/caretakers/:name/mementos/:id", method = "get")]
    async fn get_memento(
        &self,
        auth: BearerAuth,
        name: Path<String>,
        id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        let doc_id = kernel::domain::memento::projection::memento_doc_id(&name.0, &id.0);
        Ok(Json(found(
            self.state.read.get(MEMENTOS, &doc_id).await?,
            &format!("memento {} in caretaker {}", id.0, name.0),
        )?))
    }

    /// A caretaker's statistics.
    #[oai(path = "/mementos/caretakers/:name/stats", method = "get")]
    async fn stats(
        &self,
        auth: BearerAuth,
        name: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        let doc = self.caretaker(&name.0).await?;
        let number = |field: &str| doc.get(field).and_then(Value::as_f64).unwrap_or(0.0);
        let count = number("memento_count");
        let max = number("max_mementos");
        Ok(Json(json!({
            "name": name.0,
            "memento_count": count as u64,
            "total_size": number("total_size") as u64,
            "average_size": if count > 0.0 { (number("total_size") / count).round() as u64 } else { 0 },
            "by_type": doc.get("by_type").cloned().unwrap_or(json!({})),
            "max_mementos": max as u64,
            "utilization": if max > 0.0 { count / max } else { 0.0 },
            "restore_count": number("restore_count") as u64,
            "cleanup_count": number("cleanup_count") as u64,
            "last_cleanup_at": doc.get("last_cleanup_at").cloned().unwrap_or(Value::Null),
            "created_at": doc.get("created_at").cloned().unwrap_or(Value::Null),
            "updated_at": doc.get("updated_at").cloned().unwrap_or(Value::Null),
        })))
    }

    /// Get an originator and its current state.
    #[oai(
        path = "/originators/:id",
        method = "get",
        tag = "ApiTags::Originators"
    )]
    async fn get_originator(
        &self,
        auth: BearerAuth,
        id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        Ok(Json(found(
            self.state.read.get(ORIGINATORS, &id.0).await?,
            &format!("originator {}", id.0),
        )?))
    }

    /// An originator's versions, oldest first.
    #[oai(
        path = "/originators/:id/history",
        method = "get",
        tag = "ApiTags::Originators"
    )]
    async fn history(
        &self,
        auth: BearerAuth,
        id: Path<String>,
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
        found(
            self.state.read.get(ORIGINATORS, &id.0).await?,
            &format!("originator {}", id.0),
        )?;
        let mut q = query(limit.0, offset.0);
        q.filter.push(("originator_id".into(), json!(id.0)));
        q.sort = vec![("version".into(), true)];
        let page = self.state.read.find(HISTORY, &q).await?;
        Ok(Json(Page::new(page, q.limit, q.offset)))
    }

    /// An originator's state, now or at a past `version` (time travel).
    #[oai(
        path = "/originators/:id/state",
        method = "get",
        tag = "ApiTags::Originators"
    )]
    async fn state_at(
        &self,
        auth: BearerAuth,
        id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] version: Query<
            Option<u64>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        let originator = found(
            self.state.read.get(ORIGINATORS, &id.0).await?,
            &format!("originator {}", id.0),
        )?;
        let current = originator
            .get("version")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let (version, state) = match version.0 {
            None => (
                current,
                originator.get("state").cloned().unwrap_or(Value::Null),
            ),
            Some(0) => return Err(ApiError::invalid("version", "versions start at 1")),
            Some(version) => {
                let doc = found(
                    self.state
                        .read
                        .get(HISTORY, &history_doc_id(&id.0, version))
                        .await?,
                    &format!("version {version} of originator {}", id.0),
                )?;
                (version, doc.get("state").cloned().unwrap_or(Value::Null))
            }
        };
        Ok(Json(json!({
            "originator_id": id.0,
            "version": version,
            "current_version": current,
            "state": state,
        })))
    }
}

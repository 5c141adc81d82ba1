//! Repository read routes (seed 001), served from the `repository` projection: users,
//! payments, orders and products by id (through the read cache) and in pages, the lookups
//! the seed names, the repository catalog, specification queries and the cache's
//! statistics and warm-up.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi, Tags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use kernel::domain::repository::projection::{
    ORDERS, ORDER_FIELDS, PAYMENTS, PAYMENT_FIELDS, PRODUCTS, PRODUCT_FIELDS, PROJECTION_NAME,
    USERS, USER_FIELDS,
};
use kernel::domain::repository::{ORDER, PAYMENT, PRODUCT, USER};
use kernel::spec::{parse_filter, parse_sort, FieldKind, FieldSpec, Filter, Op, SpecError};
use web::{ApiError, ApiResult, BearerAuth, Role, StrictJson};

use crate::cache;
use crate::owner;
use crate::query::{check_body_bounds, found, query, Page, MAX_LIMIT, MAX_OFFSET};
use crate::ReadState;

/// The context name used for token scopes.
const REPOSITORY: &str = kernel::domain::Context::Repository.as_str();

/// Documents a cache warm-up loads per repository type when no limit is given.
const DEFAULT_WARM_LIMIT: u32 = 100;

#[derive(Tags)]
enum ApiTags {
    /// Users; each email belongs to one user at most.
    Users,
    /// Payments of users, with their status transitions.
    Payments,
    /// Orders of users; placing one reserves product stock atomically.
    Orders,
    /// The product catalog and its stock.
    Products,
    /// The repository catalog, specification queries and the read cache.
    Repositories,
}

/// One of the four repository types.
#[derive(Debug, Clone, Copy, Enum, Serialize, Deserialize, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RepositoryType {
    Users,
    Payments,
    Orders,
    Products,
}

/// What the catalog says about a repository type.
struct TypeInfo {
    name: &'static str,
    aggregate_type: &'static str,
    collection: &'static str,
    description: &'static str,
    fields: &'static [FieldSpec],
    events: &'static [&'static str],
}

const TYPES: [TypeInfo; 4] = [
    TypeInfo {
        name: "users",
        aggregate_type: USER,
        collection: USERS,
        description: "Users with a unique email (compared without case) and a name.",
        fields: USER_FIELDS,
        events: &["user_created", "user_updated", "user_deleted"],
    },
    TypeInfo {
        name: "payments",
        aggregate_type: PAYMENT,
        collection: PAYMENTS,
        description: "Payments of users: amount, currency, gateway and a status that moves \
                      pending → processing → completed | failed, completed → refunded, \
                      pending → cancelled.",
        fields: PAYMENT_FIELDS,
        events: &["payment_created", "payment_updated", "payment_deleted"],
    },
    TypeInfo {
        name: "orders",
        aggregate_type: ORDER,
        collection: ORDERS,
        description: "Orders of users: items priced when placed, a computed total and a status \
                      that moves pending → confirmed → shipped → delivered, or to cancelled \
                      from pending or confirmed. Placing an order reserves product stock in \
                      the same transaction; cancelling gives it back.",
        fields: ORDER_FIELDS,
        events: &["order_created", "order_updated", "order_deleted"],
    },
    TypeInfo {
        name: "products",
        aggregate_type: PRODUCT,
        collection: PRODUCTS,
        description: "The product catalog: name, category, price and a stock that never goes \
                      below 0.",
        fields: PRODUCT_FIELDS,
        events: &[
            "product_created",
            "product_updated",
            "product_deleted",
            "product_stock_reserved",
            "product_stock_released",
        ],
    },
];

fn type_info(kind: RepositoryType) -> &'static TypeInfo {
    let name = match kind {
        RepositoryType::Users => "users",
        RepositoryType::Payments => "payments",
        RepositoryType::Orders => "orders",
        RepositoryType::Products => "products",
    };
    TYPES
        .iter()
        .find(|info| info.name == name)
        .unwrap_or(&TYPES[0])
}

fn kind_name(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::Text => "text",
        FieldKind::Number => "number",
        FieldKind::Bool => "bool",
        FieldKind::Time => "time",
    }
}

/// A specification error as a 422 naming the place in the request (`filter.and[1].op`).
fn spec_error(err: SpecError) -> ApiError {
    ApiError::invalid(&err.path, err.message)
}

/// A specification query over one repository type.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: RepositoryType,
    /// A filter node: `{"and": [..]}`, `{"or": [..]}`, `{"not": {..}}` or
    /// `{"field": "price", "op": "lt", "value": 10}` with op one of eq, ne, gt, gte, lt, lte,
    /// in, contains. Fields are those `GET /repositories/{type}` lists.
    pub filter: Option<Value>,
    /// Sort keys, such as `[{"field": "name", "dir": "asc"}]`; ties break by id.
    pub sort: Option<Value>,
    /// Default 50, at most 1000.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
    pub limit: Option<u32>,
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    pub offset: Option<u64>,
}

/// Which documents to load into the read cache.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct WarmRequest {
    /// One repository type; all four when absent.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: Option<RepositoryType>,
    /// Most recently updated documents per type to load; default 100, at most 1000.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
    pub limit: Option<u32>,
}

/// The read cache's counters.
#[derive(Debug, Object)]
pub struct CacheStatsView {
    pub hits: u64,
    pub misses: u64,
    /// Entries in the cache.
    pub size: u64,
    /// hits / (hits + misses); 0 before the first lookup.
    pub hit_ratio: f64,
}

pub struct RepositoryReadApi {
    pub state: ReadState,
}

impl RepositoryReadApi {
    async fn ready(&self, auth: &BearerAuth, min_position: Option<u64>) -> ApiResult<()> {
        self.state
            .reader_ready(auth, REPOSITORY, PROJECTION_NAME, min_position)
            .await
    }

    /// A document by id, through the read cache; one the token's acting user does not own
    /// answers like a missing one.
    async fn by_id(
        &self,
        auth: &BearerAuth,
        collection: &str,
        id: &str,
        what: &str,
    ) -> ApiResult<Json<Value>> {
        let doc = self
            .state
            .cached_get(PROJECTION_NAME, collection, id)
            .await?;
        let doc = owner::visible(&auth.0, collection, doc);
        Ok(Json(found(doc, &format!("{what} {id}"))?))
    }

    /// A page of a collection, oldest first, with optional equality filters, kept to the
    /// token's acting user's own documents.
    async fn page(
        &self,
        auth: &BearerAuth,
        collection: &str,
        mut filter: Vec<(String, Value)>,
        condition: Option<Filter>,
        limit: Option<u32>,
        offset: Option<u64>,
    ) -> ApiResult<Json<Page>> {
        filter.extend(owner::owner_filter(&auth.0, collection));
        let mut q = query(limit, offset);
        q.filter = filter;
        q.condition = condition;
        q.sort = vec![("created_at".into(), true)];
        let page = self.state.read.find(collection, &q).await?;
        Ok(Json(Page::new(page, q.limit, q.offset)))
    }

    /// The catalog entry of a type, with its document count (of the documents `auth` may
    /// read).
    async fn describe(&self, auth: &BearerAuth, info: &TypeInfo) -> ApiResult<Value> {
        let mut q = query(Some(1), None);
        q.sort = vec![];
        // A token acting for a user counts only what it may read.
        q.filter
            .extend(owner::owner_filter(&auth.0, info.collection));
        let count = self.state.read.find(info.collection, &q).await?.total;
        let fields: Vec<Value> = info
            .fields
            .iter()
            .map(|field| json!({ "name": field.name, "kind": kind_name(field.kind) }))
            .collect();
        Ok(json!({
            "type": info.name,
            "aggregate_type": info.aggregate_type,
            "collection": info.collection,
            "description": info.description,
            "fields": fields,
            "events": info.events,
            "count": count,
        }))
    }
}

/// `?min_position=`: wait until the read model has applied this position (read your writes).
type MinPosition = Query<Option<u64>>;
type Limit = Query<Option<u32>>;
type Offset = Query<Option<u64>>;

#[OpenApi]
impl RepositoryReadApi {
    /// List users, oldest first.
    #[oai(path = "/users", method = "get", tag = "ApiTags::Users")]
    async fn list_users(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        self.page(&auth, USERS, vec![], None, limit.0, offset.0)
            .await
    }

    /// Search users whose name or email contains `q` (case-insensitive).
    #[oai(path = "/users/search", method = "get", tag = "ApiTags::Users")]
    async fn search_users(
        &self,
        auth: BearerAuth,
        #[oai(validator(min_length = 1, max_length = 256))] q: Query<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let condition = Filter::Or(vec![
            Filter::condition("name", Op::Contains, json!(q.0)),
            Filter::condition("email", Op::Contains, json!(q.0)),
        ]);
        self.page(&auth, USERS, vec![], Some(condition), limit.0, offset.0)
            .await
    }

    /// Get a user.
    #[oai(path = "/users/:id", method = "get", tag = "ApiTags::Users")]
    async fn get_user(
        &self,
        auth: BearerAuth,
        id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        self.by_id(&auth, USERS, &id.0, "user").await
    }

    /// List payments, oldest first.
    #[oai(path = "/payments", method = "get", tag = "ApiTags::Payments")]
    async fn list_payments(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        self.page(&auth, PAYMENTS, vec![], None, limit.0, offset.0)
            .await
    }

    /// Get a payment.
    #[oai(path = "/payments/:id", method = "get", tag = "ApiTags::Payments")]
    async fn get_payment(
        &self,
        auth: BearerAuth,
        id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        self.by_id(&auth, PAYMENTS, &id.0, "payment").await
    }

    /// A user's payments, oldest first.
    #[oai(
        path = "/payments/user/:user_id",
        method = "get",
        tag = "ApiTags::Payments"
    )]
    async fn payments_of_user(
        &self,
        auth: BearerAuth,
        user_id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        owner::require_user(&auth.0, &user_id.0)?;
        let filter = vec![("user_id".to_string(), json!(user_id.0))];
        self.page(&auth, PAYMENTS, filter, None, limit.0, offset.0)
            .await
    }

    /// List orders, oldest first.
    #[oai(path = "/orders", method = "get", tag = "ApiTags::Orders")]
    async fn list_orders(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        self.page(&auth, ORDERS, vec![], None, limit.0, offset.0)
            .await
    }

    /// Get an order.
    #[oai(path = "/orders/:id", method = "get", tag = "ApiTags::Orders")]
    async fn get_order(
        &self,
        auth: BearerAuth,
        id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        self.by_id(&auth, ORDERS, &id.0, "order").await
    }

    /// A user's orders, oldest first.
    #[oai(
        path = "/orders/user/:user_id",
        method = "get",
        tag = "ApiTags::Orders"
    )]
    async fn orders_of_user(
        &self,
        auth: BearerAuth,
        user_id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        owner::require_user(&auth.0, &user_id.0)?;
        let filter = vec![("user_id".to_string(), json!(user_id.0))];
        self.page(&auth, ORDERS, filter, None, limit.0, offset.0)
            .await
    }

    /// List products, oldest first.
    #[oai(path = "/products", method = "get", tag = "ApiTags::Products")]
    async fn list_products(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        self.page(&auth, PRODUCTS, vec![], None, limit.0, offset.0)
            .await
    }

    /// Get a product.
    #[oai(path = "/products/:id", method = "get", tag = "ApiTags::Products")]
    async fn get_product(
        &self,
        auth: BearerAuth,
        id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        self.by_id(&auth, PRODUCTS, &id.0, "product").await
    }

    /// The products of a category (exact match), oldest first.
    #[oai(
        path = "/products/category/:category",
        method = "get",
        tag = "ApiTags::Products"
    )]
    async fn products_in_category(
        &self,
        auth: BearerAuth,
        category: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let filter = vec![("category".to_string(), json!(category.0))];
        self.page(&auth, PRODUCTS, filter, None, limit.0, offset.0)
            .await
    }

    /// The repository types: description, queryable fields, event types, document count.
    #[oai(path = "/repositories", method = "get", tag = "ApiTags::Repositories")]
    async fn list_repositories(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        let mut items = Vec::with_capacity(TYPES.len());
        for info in &TYPES {
            items.push(self.describe(&auth, info).await?);
        }
        Ok(Json(json!({ "items": items, "total": TYPES.len() })))
    }

    /// One repository type (users, payments, orders or products).
    #[oai(
        path = "/repositories/:type",
        method = "get",
        tag = "ApiTags::Repositories"
    )]
    async fn get_repository(
        &self,
        auth: BearerAuth,
        #[oai(name = "type")] kind: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        let info = TYPES
            .iter()
            .find(|info| info.name == kind.0)
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "repository type {} not found; the types are users, payments, orders, products",
                    kind.0
                ))
            })?;
        Ok(Json(self.describe(&auth, info).await?))
    }

    /// Run a specification query: a filter tree, a sort and a page over one repository type.
    #[oai(
        path = "/repositories/query",
        method = "post",
        tag = "ApiTags::Repositories"
    )]
    async fn query(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
        body: StrictJson<QueryRequest>,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let request = body.0;
        check_body_bounds(
            "limit",
            request.limit.map(u64::from),
            1,
            u64::from(MAX_LIMIT),
        )?;
        check_body_bounds("offset", request.offset, 0, MAX_OFFSET)?;
        let info = type_info(request.kind);
        let mut q = query(request.limit, request.offset);
        q.filter
            .extend(owner::owner_filter(&auth.0, info.collection));
        q.condition = request
            .filter
            .as_ref()
            .map(|filter| parse_filter(filter, info.fields))
            .transpose()
            .map_err(spec_error)?;
        q.sort = match &request.sort {
            Some(sort) => parse_sort(sort, info.fields).map_err(spec_error)?,
            None => vec![("created_at".into(), true)],
        };
        let page = self.state.read.find(info.collection, &q).await?;
        Ok(Json(Page::new(page, q.limit, q.offset)))
    }

    /// The read cache's hits, misses, size and hit ratio.
    #[oai(
        path = "/repositories/cache/stats",
        method = "get",
        tag = "ApiTags::Repositories"
    )]
    async fn cache_stats(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<CacheStatsView>> {
        self.ready(&auth, min_position.0).await?;
        let stats = self.state.cache.stats().await?;
        let lookups = stats.hits + stats.misses;
        Ok(Json(CacheStatsView {
            hits: stats.hits,
            misses: stats.misses,
            size: stats.size,
            hit_ratio: if lookups == 0 {
                0.0
            } else {
                stats.hits as f64 / lookups as f64
            },
        }))
    }

    /// Load the most recently updated documents of one or every repository type into the
    /// read cache (writer role); answers how many were loaded.
    #[oai(
        path = "/repositories/cache/warm",
        method = "post",
        tag = "ApiTags::Repositories"
    )]
    async fn cache_warm(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
        body: StrictJson<WarmRequest>,
    ) -> ApiResult<Json<Value>> {
        // It fills a shared resource: a writer's action, like the route policy says.
        auth.0.allow(Role::Writer, REPOSITORY)?;
        self.state
            .await_position(PROJECTION_NAME, min_position.0)
            .await?;
        let request = body.0;
        check_body_bounds(
            "limit",
            request.limit.map(u64::from),
            1,
            u64::from(MAX_LIMIT),
        )?;
        let limit = request
            .limit
            .unwrap_or(DEFAULT_WARM_LIMIT)
            .clamp(1, MAX_LIMIT);
        let types: Vec<&TypeInfo> = match request.kind {
            Some(kind) => vec![type_info(kind)],
            None => TYPES.iter().collect(),
        };
        // As in `ReadState::cached_get`: an apply between the read and the put may already
        // have invalidated its keys, so a moved checkpoint drops what was put.
        let before = self.state.checkpoint(PROJECTION_NAME).await?;
        let mut keys = Vec::new();
        let mut by_type = serde_json::Map::new();
        for info in types {
            let mut q = query(Some(limit), None);
            q.sort = vec![("updated_at".into(), false)];
            let page = self.state.read.find(info.collection, &q).await?;
            let mut loaded = 0u64;
            for doc in page.items {
                let Some(id) = doc.get("id").and_then(Value::as_str).map(str::to_string) else {
                    continue;
                };
                let key = cache::key(info.collection, &id);
                self.state
                    .cache
                    .put(&key, &doc, Some(self.state.cache_ttl))
                    .await?;
                keys.push(key);
                loaded += 1;
            }
            by_type.insert(info.name.to_string(), json!(loaded));
        }
        if self.state.checkpoint(PROJECTION_NAME).await? != before {
            for key in &keys {
                self.state.cache.invalidate(key).await?;
            }
        }
        let warmed = keys.len();
        Ok(Json(json!({
            "warmed": warmed,
            "by_type": by_type,
            "limit": limit,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_catalog_matches_the_enum() {
        for kind in [
            RepositoryType::Users,
            RepositoryType::Payments,
            RepositoryType::Orders,
            RepositoryType::Products,
        ] {
            let info = type_info(kind);
            let name = serde_json::to_value(kind).expect("serialize");
            assert_eq!(json!(info.name), name);
        }
    }

    #[test]
    fn repository_spec_errors_name_the_path() {
        let err = parse_filter(
            &json!({"and": [{"field": "price", "op": "lt", "value": 1}, {"field": "nope", "op": "eq", "value": 1}]}),
            PRODUCT_FIELDS,
        )
        .map(|_| ())
        .map_err(spec_error)
        .expect_err("unknown field");
        match err {
            ApiError::Unprocessable { errors, .. } => {
                assert_eq!(errors[0].field, "filter.and[1].field")
            }
            other => panic!("expected a 422, got {other:?}"),
        }
    }
}

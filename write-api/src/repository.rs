//! Repository routes (seed 001): users, payments, orders and products.
//!
//! Users, products and payments change one aggregate per command. Two commands span
//! several, in one unit of work (one transaction): a user's email is reserved (and the old
//! one released) together with the user's event, so two users never share an email; and
//! placing an order reserves stock on every product it names together with the order, while
//! cancelling or deleting it gives the stock back, so stock never goes below 0 and a failed
//! order writes nothing.
//!
//! A token that acts for a user ([`web::Claims::acting_user`]) writes only that user's own
//! users, payments and orders: creating one for another user is a 403, changing another
//! user's answers 404 like a missing one (checked on the loaded state, so nothing leaks).

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::param::{Header, Path};
use poem_openapi::{Enum, Object, OpenApi, Tags};
use serde::{Deserialize, Serialize};

use kernel::domain::repository::order::validate_items;
use kernel::domain::repository::user::email_claims;
use kernel::domain::repository::{
    is_valid_id, nest_field, Order, OrderCommand, OrderStatus, Payment, PaymentCommand,
    PaymentStatus, PricedItem, Product, ProductCommand, User, UserCommand, EMAIL_SCOPE, ORDER,
    PAYMENT, PRODUCT, USER,
};
use kernel::domain::{DomainError, EventSourced};
use kernel::engine::{Decision, Engine, UnitOfWork};
use kernel::envelope::{CommandContext, Reservation};
use kernel::KernelError;
use web::{ApiError, ApiResult, BearerAuth, Claims, StrictJson, Text};

use crate::write::{call, execute, expected_version, new_id, writer_context, Written};
use crate::WriteState;

/// The context name used for token scopes.
const REPOSITORY: &str = kernel::domain::Context::Repository.as_str();

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
}

/// A payment's status.
#[derive(Debug, Clone, Copy, Enum, Serialize, Deserialize, PartialEq)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatusName {
    Pending,
    Processing,
    Completed,
    Failed,
    Refunded,
    Cancelled,
}

impl From<PaymentStatusName> for PaymentStatus {
    fn from(status: PaymentStatusName) -> Self {
        match status {
            PaymentStatusName::Pending => PaymentStatus::Pending,
            PaymentStatusName::Processing => PaymentStatus::Processing,
            PaymentStatusName::Completed => PaymentStatus::Completed,
            PaymentStatusName::Failed => PaymentStatus::Failed,
            PaymentStatusName::Refunded => PaymentStatus::Refunded,
            PaymentStatusName::Cancelled => PaymentStatus::Cancelled,
        }
    }
}

/// An order's status.
#[derive(Debug, Clone, Copy, Enum, Serialize, Deserialize, PartialEq)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum OrderStatusName {
    Pending,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl From<OrderStatusName> for OrderStatus {
    fn from(status: OrderStatusName) -> Self {
        match status {
            OrderStatusName::Pending => OrderStatus::Pending,
            OrderStatusName::Confirmed => OrderStatus::Confirmed,
            OrderStatusName::Shipped => OrderStatus::Shipped,
            OrderStatusName::Delivered => OrderStatus::Delivered,
            OrderStatusName::Cancelled => OrderStatus::Cancelled,
        }
    }
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Generated when absent.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub id: Option<Text>,
    /// Unique across users, compared without case.
    #[oai(validator(
        min_length = 3,
        max_length = 254,
        pattern = r"^\s*[^@\s]+@[^@\s]+\.[^@\s]+\s*$"
    ))]
    pub email: Text,
    #[oai(validator(pattern = r"\S", max_length = 256))]
    pub name: Text,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[oai(validator(
        min_length = 3,
        max_length = 254,
        pattern = r"^\s*[^@\s]+@[^@\s]+\.[^@\s]+\s*$"
    ))]
    pub email: Option<Text>,
    #[oai(validator(pattern = r"\S", max_length = 256))]
    pub name: Option<Text>,
    /// Optimistic concurrency: the version the change is based on (or send `If-Match`).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentRequest {
    /// Generated when absent.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub id: Option<Text>,
    /// An existing user that is not deleted.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub user_id: Text,
    /// Above 0, at most two decimals.
    #[oai(validator(
        minimum(value = "0", exclusive = true),
        maximum(value = "1000000000"),
        multiple_of = 0.01
    ))]
    pub amount: f64,
    /// Three upper-case letters, such as USD.
    #[oai(validator(pattern = r"^[A-Z]{3}$"))]
    pub currency: Text,
    /// Such as stripe.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub gateway: Text,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdatePaymentRequest {
    /// pending → processing | cancelled; processing → completed | failed; completed → refunded.
    pub status: Option<PaymentStatusName>,
    /// Only while pending.
    #[oai(validator(
        minimum(value = "0", exclusive = true),
        maximum(value = "1000000000"),
        multiple_of = 0.01
    ))]
    pub amount: Option<f64>,
    /// Only while pending.
    #[oai(validator(pattern = r"^[A-Z]{3}$"))]
    pub currency: Option<Text>,
    /// Only while pending.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub gateway: Option<Text>,
    /// Optimistic concurrency: the version the change is based on (or send `If-Match`).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct OrderItemRequest {
    /// An existing product that is not deleted; each product at most once per order.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub product_id: Text,
    #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
    pub quantity: i64,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// Generated when absent.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub id: Option<Text>,
    /// An existing user that is not deleted.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub user_id: Text,
    /// Priced at the products' current prices; the total is computed here.
    #[oai(validator(min_items = 1, max_items = 100))]
    pub items: Vec<OrderItemRequest>,
    /// Three upper-case letters, such as USD.
    #[oai(validator(pattern = r"^[A-Z]{3}$"))]
    pub currency: Text,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrderRequest {
    /// pending → confirmed | cancelled; confirmed → shipped | cancelled; shipped → delivered.
    /// Cancelling gives the reserved stock back.
    pub status: OrderStatusName,
    /// Optimistic concurrency: the version the change is based on (or send `If-Match`).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    /// Generated when absent.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub id: Option<Text>,
    #[oai(validator(pattern = r"\S", max_length = 256))]
    pub name: Text,
    #[oai(validator(pattern = r"\S", max_length = 64))]
    pub category: Text,
    /// At least 0, at most two decimals.
    #[oai(validator(
        minimum(value = "0"),
        maximum(value = "1000000000"),
        multiple_of = 0.01
    ))]
    pub price: f64,
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub stock: i64,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateProductRequest {
    #[oai(validator(pattern = r"\S", max_length = 256))]
    pub name: Option<Text>,
    #[oai(validator(pattern = r"\S", max_length = 64))]
    pub category: Option<Text>,
    #[oai(validator(
        minimum(value = "0"),
        maximum(value = "1000000000"),
        multiple_of = 0.01
    ))]
    pub price: Option<f64>,
    /// Sets the stock outright.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub stock: Option<i64>,
    /// Optimistic concurrency: the version the change is based on (or send `If-Match`).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    pub expected_version: Option<u64>,
}

pub struct RepositoryWriteApi {
    pub state: WriteState,
}

fn id_or_new(id: &Option<Text>) -> String {
    id.clone().map_or_else(new_id, Text::into_string)
}

fn text(value: &Option<Text>) -> Option<String> {
    value.clone().map(Text::into_string)
}

fn email_reservation(value: String, owner: &str) -> Reservation {
    Reservation {
        scope: EMAIL_SCOPE.to_string(),
        value,
        owner: owner.to_string(),
    }
}

/// Adds a user's decision with the email reservations its events claim and give back.
pub(crate) fn push_user(uow: &mut UnitOfWork, decision: Decision<User>) -> Result<(), KernelError> {
    for event in &decision.events {
        let claims = email_claims(event);
        if let Some(old) = claims.release {
            uow.release(email_reservation(old, &decision.aggregate_id));
        }
        if let Some(new) = claims.reserve {
            uow.reserve(email_reservation(new, &decision.aggregate_id));
        }
    }
    uow.push(decision)
}

/// Fails with 403 naming `field` unless the token's acting user (if any) is `owner`, the
/// user a new aggregate would belong to.
fn require_creating_own(claims: &Claims, field: &str, owner: &str) -> ApiResult<()> {
    match claims.acting_user() {
        Some(user) if user != owner => Err(ApiError::Forbidden(format!(
            "{field}: this token acts for user {user} and may only create that user's own \
             aggregates"
        ))),
        _ => Ok(()),
    }
}

/// Fails like a missing `what` (404) unless the acting user (if any) owns the aggregate:
/// `owner` is its owning user as loaded (empty when it does not exist).
fn require_owned(acting: Option<&str>, owner: &str, what: &str) -> Result<(), KernelError> {
    match acting {
        Some(user) if user != owner => Err(DomainError::NotFound(what.to_string()).into()),
        _ => Ok(()),
    }
}

/// Loads a payment and decides `command` on it, if the acting user (if any) owns it.
async fn decide_owned_payment(
    engine: &Engine,
    acting: Option<&str>,
    payment_id: &str,
    command: PaymentCommand,
) -> Result<Decision<Payment>, KernelError> {
    let loaded = engine.load::<Payment>(payment_id).await?;
    require_owned(acting, loaded.state.user_id(), "payment")?;
    Engine::decide_on(payment_id, loaded, command, &()).await
}

/// Fails with a 422 naming `field` unless `user_id` names a live user.
pub(crate) async fn require_user(
    engine: &Engine,
    field: &str,
    user_id: &str,
) -> Result<(), KernelError> {
    let missing = || DomainError::invalid(field, format!("user {user_id} does not exist"));
    if !is_valid_id(user_id) {
        return Err(missing().into());
    }
    match engine.load::<User>(user_id).await {
        Ok(user) if user.state.is_live() => Ok(()),
        Ok(_) | Err(KernelError::Forgotten(_)) => Err(missing().into()),
        Err(other) => Err(other),
    }
}

/// Reports a product's refusal under the item it came from (`items[1].quantity`).
pub(crate) fn for_item(index: usize) -> impl Fn(KernelError) -> KernelError {
    move |err| match err {
        KernelError::Rejected(domain) => {
            KernelError::Rejected(nest_field(domain, &format!("items[{index}]")))
        }
        other => other,
    }
}

/// Decides `command` on an order and, when the order stops holding stock (cancelled or
/// deleted while pending or confirmed), gives the stock back to its products, all in one
/// unit of work. Only an order the acting user (if any) owns is changed.
async fn order_unit(
    engine: &Engine,
    acting: Option<&str>,
    order_id: &str,
    command: OrderCommand,
    at: DateTime<Utc>,
) -> Result<UnitOfWork, KernelError> {
    let loaded = engine.load::<Order>(order_id).await?;
    require_owned(acting, loaded.state.user_id(), "order")?;
    let before = loaded.state.clone();
    let decision = Engine::decide_on(order_id, loaded, command, &()).await?;
    let releases = decision
        .events
        .iter()
        .any(|event| before.releases_stock(event));
    let mut uow = UnitOfWork::new();
    uow.push(decision)?;
    if releases {
        for line in before.items() {
            let release = ProductCommand::ReleaseStock {
                order_id: order_id.to_string(),
                quantity: line.quantity,
                at,
            };
            match engine
                .decide::<Product>(&line.product_id, release, &())
                .await
            {
                Ok(decision) => uow.push(decision)?,
                // A forgotten product has no stock to give back to.
                Err(KernelError::Forgotten(_)) => {}
                Err(other) => return Err(other),
            }
        }
    }
    Ok(uow)
}

impl RepositoryWriteApi {
    fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// The command context of a writer in this context.
    fn context(
        &self,
        auth: &BearerAuth,
        req: &Request,
        idempotency_key: Header<Option<String>>,
        route: &str,
        body: &impl Serialize,
    ) -> ApiResult<CommandContext> {
        writer_context(call(auth, req, idempotency_key), REPOSITORY, route, body)
    }

    /// Runs a user command with its email reservations.
    async fn run_user(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        created: bool,
        command: impl Fn() -> UserCommand,
    ) -> ApiResult<Written> {
        let engine = self.engine();
        let committed = engine
            .run(ctx, || async {
                let mut uow = UnitOfWork::new();
                push_user(
                    &mut uow,
                    engine.decide::<User>(user_id, command(), &()).await?,
                )?;
                Ok::<_, KernelError>(uow)
            })
            .await?;
        Ok(Written::from_committed(&committed, USER, user_id, created))
    }

    /// Runs a command on a payment the token's acting user (if any) owns.
    async fn run_payment(
        &self,
        auth: &BearerAuth,
        ctx: &CommandContext,
        payment_id: &str,
        command: impl Fn() -> PaymentCommand,
    ) -> ApiResult<Written> {
        let engine = self.engine();
        let acting = auth.0.acting_user();
        let committed = engine
            .run(ctx, || async {
                let mut uow = UnitOfWork::new();
                uow.push(decide_owned_payment(engine, acting, payment_id, command()).await?)?;
                Ok::<_, KernelError>(uow)
            })
            .await?;
        Ok(Written::from_committed(
            &committed, PAYMENT, payment_id, false,
        ))
    }

    /// Runs a single-aggregate command of this context for a writer.
    #[allow(clippy::too_many_arguments)]
    async fn execute<A>(
        &self,
        auth: &BearerAuth,
        req: &Request,
        idempotency_key: Header<Option<String>>,
        route: &str,
        body: &impl Serialize,
        aggregate_id: &str,
        created: bool,
        command: impl Fn() -> A::Command + Send + Sync,
    ) -> ApiResult<Written>
    where
        A: EventSourced<Services = ()>,
        KernelError: From<A::Error>,
    {
        execute::<A>(
            self.engine(),
            &(),
            call(auth, req, idempotency_key),
            REPOSITORY,
            route,
            body,
            aggregate_id,
            created,
            command,
        )
        .await
    }
}

#[OpenApi]
impl RepositoryWriteApi {
    /// Create a user. The email is unique across users (409 when taken).
    #[oai(path = "/users", method = "post", tag = "ApiTags::Users")]
    async fn create_user(
        &self,
        auth: BearerAuth,
        req: &Request,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<CreateUserRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let ctx = self.context(&auth, req, idempotency_key, "POST /users", request)?;
        let id = id_or_new(&request.id);
        require_creating_own(&auth.0, "id", &id)?;
        self.run_user(&ctx, &id, true, || UserCommand::CreateUser {
            id: id.clone(),
            email: request.email.to_string(),
            name: request.name.to_string(),
            at,
        })
        .await
    }

    /// Change a user's email and/or name. A new email is reserved and the old one released
    /// in the same transaction.
    #[oai(path = "/users/:id", method = "put", tag = "ApiTags::Users")]
    async fn update_user(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<UpdateUserRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let expected = expected_version(if_match.0, request.expected_version)?;
        let route = format!("PUT /users/{}", id.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, &(request, expected))?;
        require_owned(auth.0.acting_user(), &id.0, "user")?;
        self.run_user(&ctx, &id.0, false, || UserCommand::UpdateUser {
            email: text(&request.email),
            name: text(&request.name),
            expected_version: expected,
            at,
        })
        .await
    }

    /// Delete a user; its email becomes free.
    #[oai(path = "/users/:id", method = "delete", tag = "ApiTags::Users")]
    async fn delete_user(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let expected = expected_version(if_match.0, None)?;
        let route = format!("DELETE /users/{}", id.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, &expected)?;
        require_owned(auth.0.acting_user(), &id.0, "user")?;
        self.run_user(&ctx, &id.0, false, || UserCommand::DeleteUser {
            expected_version: expected,
            at,
        })
        .await
    }

    /// Create a pending payment for an existing user.
    #[oai(path = "/payments", method = "post", tag = "ApiTags::Payments")]
    async fn create_payment(
        &self,
        auth: BearerAuth,
        req: &Request,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<CreatePaymentRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let ctx = self.context(&auth, req, idempotency_key, "POST /payments", request)?;
        require_creating_own(&auth.0, "user_id", &request.user_id)?;
        let id = id_or_new(&request.id);
        let engine = self.engine();
        let committed = engine
            .run(&ctx, || async {
                require_user(engine, "user_id", &request.user_id).await?;
                let create = PaymentCommand::CreatePayment {
                    id: id.clone(),
                    user_id: request.user_id.to_string(),
                    amount: request.amount,
                    currency: request.currency.to_string(),
                    gateway: request.gateway.to_string(),
                    at,
                };
                let mut uow = UnitOfWork::new();
                uow.push(engine.decide::<Payment>(&id, create, &()).await?)?;
                Ok::<_, KernelError>(uow)
            })
            .await?;
        Ok(Written::from_committed(&committed, PAYMENT, &id, true))
    }

    /// Move a payment's status along a legal transition, or change its details while pending.
    #[oai(path = "/payments/:id", method = "put", tag = "ApiTags::Payments")]
    async fn update_payment(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<UpdatePaymentRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let expected = expected_version(if_match.0, request.expected_version)?;
        let route = format!("PUT /payments/{}", id.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, &(request, expected))?;
        self.run_payment(&auth, &ctx, &id.0, || PaymentCommand::UpdatePayment {
            status: request.status.map(Into::into),
            amount: request.amount,
            currency: text(&request.currency),
            gateway: text(&request.gateway),
            expected_version: expected,
            at,
        })
        .await
    }

    /// Delete a payment (not while it is processing).
    #[oai(path = "/payments/:id", method = "delete", tag = "ApiTags::Payments")]
    async fn delete_payment(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let expected = expected_version(if_match.0, None)?;
        let route = format!("DELETE /payments/{}", id.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, &expected)?;
        self.run_payment(&auth, &ctx, &id.0, || PaymentCommand::DeletePayment {
            expected_version: expected,
            at,
        })
        .await
    }

    /// Place an order: prices the items, computes the total and reserves the stock of every
    /// product in the same transaction. Any failure (an unknown product, too little stock)
    /// writes nothing and names the item.
    #[oai(path = "/orders", method = "post", tag = "ApiTags::Orders")]
    async fn create_order(
        &self,
        auth: BearerAuth,
        req: &Request,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<CreateOrderRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let ctx = self.context(&auth, req, idempotency_key, "POST /orders", request)?;
        require_creating_own(&auth.0, "user_id", &request.user_id)?;
        // Malformed items are refused before anything is loaded.
        validate_items(
            request
                .items
                .iter()
                .map(|item| (item.product_id.as_str(), item.quantity)),
        )?;
        let id = id_or_new(&request.id);
        let engine = self.engine();
        let committed = engine
            .run(&ctx, || async {
                require_user(engine, "user_id", &request.user_id).await?;
                let mut products = Vec::with_capacity(request.items.len());
                let mut priced = Vec::with_capacity(request.items.len());
                for (index, item) in request.items.iter().enumerate() {
                    let missing = || {
                        DomainError::invalid(
                            &format!("items[{index}].product_id"),
                            format!("product {} does not exist", item.product_id),
                        )
                    };
                    let product = match engine.load::<Product>(&item.product_id).await {
                        Ok(product) if product.state.is_live() => product,
                        Ok(_) | Err(KernelError::Forgotten(_)) => return Err(missing().into()),
                        Err(other) => return Err(other),
                    };
                    priced.push(PricedItem {
                        product_id: item.product_id.to_string(),
                        quantity: item.quantity,
                        unit_price: product.state.price(),
                    });
                    products.push(product);
                }
                let place = OrderCommand::PlaceOrder {
                    id: id.clone(),
                    user_id: request.user_id.to_string(),
                    currency: request.currency.to_string(),
                    items: priced,
                    at,
                };
                let mut uow = UnitOfWork::new();
                uow.push(engine.decide::<Order>(&id, place, &()).await?)?;
                for (index, (item, product)) in request.items.iter().zip(products).enumerate() {
                    let reserve = ProductCommand::ReserveStock {
                        order_id: id.clone(),
                        quantity: item.quantity,
                        at,
                    };
                    let decision = Engine::decide_on(&item.product_id, product, reserve, &())
                        .await
                        .map_err(for_item(index))?;
                    uow.push(decision)?;
                }
                Ok::<_, KernelError>(uow)
            })
            .await?;
        Ok(Written::from_committed(&committed, ORDER, &id, true))
    }

    /// Move an order's status along a legal transition; cancelling gives its stock back in
    /// the same transaction.
    #[oai(path = "/orders/:id", method = "put", tag = "ApiTags::Orders")]
    async fn update_order(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<UpdateOrderRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let expected = expected_version(if_match.0, request.expected_version)?;
        let route = format!("PUT /orders/{}", id.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, &(request, expected))?;
        let engine = self.engine();
        let committed = engine
            .run(&ctx, || {
                let change = OrderCommand::ChangeStatus {
                    status: request.status.into(),
                    expected_version: expected,
                    at,
                };
                order_unit(engine, auth.0.acting_user(), &id.0, change, at)
            })
            .await?;
        Ok(Written::from_committed(&committed, ORDER, &id.0, false))
    }

    /// Delete an order; a pending or confirmed order gives its stock back in the same
    /// transaction.
    #[oai(path = "/orders/:id", method = "delete", tag = "ApiTags::Orders")]
    async fn delete_order(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let expected = expected_version(if_match.0, None)?;
        let route = format!("DELETE /orders/{}", id.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, &expected)?;
        let engine = self.engine();
        let committed = engine
            .run(&ctx, || {
                let delete = OrderCommand::DeleteOrder {
                    expected_version: expected,
                    at,
                };
                order_unit(engine, auth.0.acting_user(), &id.0, delete, at)
            })
            .await?;
        Ok(Written::from_committed(&committed, ORDER, &id.0, false))
    }

    /// Create a product.
    #[oai(path = "/products", method = "post", tag = "ApiTags::Products")]
    async fn create_product(
        &self,
        auth: BearerAuth,
        req: &Request,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<CreateProductRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let ctx = self.context(&auth, req, idempotency_key, "POST /products", request)?;
        let id = id_or_new(&request.id);
        let engine = self.engine();
        let committed = engine
            .create::<Product, _>(
                &id,
                || ProductCommand::CreateProduct {
                    id: id.clone(),
                    name: request.name.to_string(),
                    category: request.category.to_string(),
                    price: request.price,
                    stock: request.stock,
                    at,
                },
                &(),
                &ctx,
            )
            .await?;
        Ok(Written::from_committed(&committed, PRODUCT, &id, true))
    }

    /// Change a product's name, category, price and/or stock.
    #[oai(path = "/products/:id", method = "put", tag = "ApiTags::Products")]
    async fn update_product(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<UpdateProductRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let expected = expected_version(if_match.0, request.expected_version)?;
        self.execute::<Product>(
            &auth,
            req,
            idempotency_key,
            &format!("PUT /products/{}", id.0),
            &(request, expected),
            &id.0,
            false,
            || ProductCommand::UpdateProduct {
                name: text(&request.name),
                category: text(&request.category),
                price: request.price,
                stock: request.stock,
                expected_version: expected,
                at,
            },
        )
        .await
    }

    /// Delete a product.
    #[oai(path = "/products/:id", method = "delete", tag = "ApiTags::Products")]
    async fn delete_product(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let expected = expected_version(if_match.0, None)?;
        self.execute::<Product>(
            &auth,
            req,
            idempotency_key,
            &format!("DELETE /products/{}", id.0),
            &expected,
            &id.0,
            false,
            || ProductCommand::DeleteProduct {
                expected_version: expected,
                at,
            },
        )
        .await
    }
}

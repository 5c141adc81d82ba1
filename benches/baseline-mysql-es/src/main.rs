//! The peer for `commands_per_s_vs_mysql_es`: the same product aggregate and the same
//! `POST /api/v1/products` payload as Quintet, on cqrs-es 0.5 with mysql-es 0.5 (its
//! `PersistedEventStore`, no snapshots, no queries) behind poem, against the same MariaDB.
//!
//! `baseline-mysql-es <listen addr> <mysql url> <pool size>`; the database must already hold
//! mysql-es's `events` table (see `schema.sql`, mysql-es's `db/init.sql` fixed for MariaDB).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateError, DomainEvent};
use mysql_es::{mysql_cqrs, MysqlCqrs};
use poem::http::StatusCode;
use poem::listener::TcpListener;
use poem::web::{Data, Json};
use poem::{handler, post, EndpointExt, IntoResponse, Response, Route, Server};
use serde::{Deserialize, Serialize};

/// The request body Quintet's `POST /api/v1/products` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProductRequest {
    id: Option<String>,
    name: String,
    category: String,
    price: f64,
    stock: i64,
}

#[derive(Debug)]
enum ProductCommand {
    CreateProduct {
        id: String,
        name: String,
        category: String,
        price: f64,
        stock: i64,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ProductEvent {
    ProductCreated {
        id: String,
        name: String,
        category: String,
        price: f64,
        stock: u64,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> String {
        "product_created".into()
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

/// A refused command (the handler answers 422 with its text).
#[derive(Debug)]
struct ProductError(String);

impl std::fmt::Display for ProductError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProductError {}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Product {
    created: bool,
    name: String,
    category: String,
    price: f64,
    stock: u64,
}

impl Aggregate for Product {
    const TYPE: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let ProductCommand::CreateProduct {
            id,
            name,
            category,
            price,
            stock,
            at,
        } = command;
        if self.created {
            return Err(ProductError(format!("product {id} already exists")));
        }
        if name.trim().is_empty() || category.trim().is_empty() {
            return Err(ProductError("name and category must not be blank".into()));
        }
        if !(0.0..=1e9).contains(&price) || !(0..=1_000_000_000).contains(&stock) {
            return Err(ProductError("price or stock out of range".into()));
        }
        let event = ProductEvent::ProductCreated {
            id,
            name,
            category,
            price,
            stock: stock as u64,
            at,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let ProductEvent::ProductCreated {
            name,
            category,
            price,
            stock,
            ..
        } = event;
        *self = Product {
            created: true,
            name,
            category,
            price,
            stock,
        };
    }
}

#[handler]
async fn create_product(
    cqrs: Data<&Arc<MysqlCqrs<Product>>>,
    Json(request): Json<CreateProductRequest>,
) -> Response {
    let id = request
        .id
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let command = ProductCommand::CreateProduct {
        id: id.clone(),
        name: request.name,
        category: request.category,
        price: request.price,
        stock: request.stock,
        at: Utc::now(),
    };
    match cqrs.execute(&id, command).await {
        Ok(()) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "id": id, "type": "product" })),
        )
            .into_response(),
        Err(AggregateError::UserError(err)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, err.to_string()).into_response()
        }
        Err(AggregateError::AggregateConflict) => StatusCode::CONFLICT.into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), std::io::Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, url, pool_size] = args.as_slice() else {
        eprintln!("usage: baseline-mysql-es <listen addr> <mysql url> <pool size>");
        std::process::exit(2);
    };
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(pool_size.parse().expect("pool size"))
        .connect(url)
        .await
        .expect("connect to MariaDB");
    let cqrs = Arc::new(mysql_cqrs::<Product>(pool, vec![], ()));
    let app = Route::new()
        .at("/api/v1/products", post(create_product))
        .data(cqrs);
    eprintln!("baseline-mysql-es listening on {listen}");
    Server::new(TcpListener::bind(listen.as_str()))
        .run(app)
        .await
}

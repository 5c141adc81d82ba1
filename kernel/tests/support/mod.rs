//! Shared helpers for integration tests: a fresh, migrated event store per test.
//!
//! Use from a test file with `mod support;`. MariaDB tests get their own database
//! `quintet_t_<hex>` on `MYSQL_TEST_URL` (default `mysql://root@127.0.0.1:3306`), dropped when
//! the handle is dropped; SQLite tests get their own temp file, removed the same way.

#![allow(dead_code)]

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use kernel::adapters::sql::{MySqlEventStore, SqliteEventStore};
use sqlx::Connection;

pub mod rig;

/// The server that MariaDB tests use, without a database name.
pub fn mysql_base_url() -> String {
    std::env::var("MYSQL_TEST_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
        .trim_end_matches('/')
        .to_string()
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A migrated MariaDB event store on a database of its own.
pub struct MySqlTestDb {
    pub store: Arc<MySqlEventStore>,
    /// The URL of the test database (for raw pools in tests).
    pub url: String,
    pub name: String,
}

impl Deref for MySqlTestDb {
    type Target = Arc<MySqlEventStore>;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

/// Creates `quintet_t_<hex>`, connects a store (8 connections) and runs the migrations.
pub async fn fresh_mysql() -> MySqlTestDb {
    let base = mysql_base_url();
    let name = format!("quintet_t_{}", random_hex());
    let mut admin = sqlx::MySqlConnection::connect(&base)
        .await
        .expect("connect to MariaDB (MYSQL_TEST_URL)");
    sqlx::query(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    admin.close().await.ok();
    let url = format!("{base}/{name}");
    let store = MySqlEventStore::connect(&url, 8)
        .await
        .expect("connect the store");
    store.migrate().await.expect("migrate");
    MySqlTestDb {
        store: Arc::new(store),
        url,
        name,
    }
}

impl Drop for MySqlTestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which may be single-threaded: use a runtime of
        // our own on a thread of our own. A short lock wait keeps a test that failed with a
        // transaction still open from hanging here.
        let base = mysql_base_url();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for the drop");
            rt.block_on(async move {
                let mut conn = sqlx::MySqlConnection::connect(&base).await.ok()?;
                sqlx::query("SET SESSION lock_wait_timeout = 5")
                    .execute(&mut conn)
                    .await
                    .ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// A migrated SQLite event store on a temp file of its own.
pub struct SqliteTestDb {
    pub store: Arc<SqliteEventStore>,
    pub path: PathBuf,
}

impl Deref for SqliteTestDb {
    type Target = Arc<SqliteEventStore>;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

/// A new SQLite file in the temp dir, a store on it (4 readers) and the migrations.
pub async fn fresh_sqlite() -> SqliteTestDb {
    let path = std::env::temp_dir().join(format!("quintet_t_{}.db", random_hex()));
    let url = format!("sqlite://{}", path.display());
    let store = SqliteEventStore::connect(&url, 4)
        .await
        .expect("open the SQLite store");
    store.migrate().await.expect("migrate");
    SqliteTestDb {
        store: Arc::new(store),
        path,
    }
}

impl Drop for SqliteTestDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = self.path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

//! Adapters behind the ports.
pub mod memory;
pub mod read_sqlite;
pub mod redis;
pub mod sql;

//! Adapters behind the ports.
pub mod doc_fold;
pub mod kafka;
pub mod kafka_commands;
pub mod memory;
pub mod mongo;
pub mod read_sqlite;
pub mod redis;
pub mod sql;

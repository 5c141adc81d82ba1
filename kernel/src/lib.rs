//! Quintet's kernel: the domain of the five contexts (aggregates, commands, events,
//! projections), the ports it needs, the payload codec, the command engine, the feed and
//! the adapters (sqlx, redis, in-process) that sit behind the ports.

pub mod adapters;
pub mod codec;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod ports;
pub mod spec;

pub use error::{KernelError, KernelResult};
pub mod config;
pub mod engine;
pub mod feed;
pub mod projector;
pub mod relay;
pub mod replay;
pub mod task;
pub mod telemetry;
pub mod wiring;

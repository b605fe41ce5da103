//! pairdb-storage-node: a RocksDB-backed replica serving `pairdb.StorageNodeService`.
//!
//! Code map: [`server`] starts everything; [`api`] is the gRPC edge; [`store`] is the keyspace
//! (per-key atomic writes and merges, streaming, digests, integrity); [`pull`] is the
//! receiving side of range streams; [`engine`] hides RocksDB;
//! [`identity`] owns the replica's actor and dot counter; [`disk`] gates writes on disk usage;
//! [`join`] self-registers with a coordinator (`--join`); [`backup`] writes and restores this
//! node's part of a cluster backup; [`admin`] is the admin HTTP API; [`metrics`] and [`recent`] feed `/metrics` and `/health`.
//! This crate never depends on the coordinator or on sqlx.

pub mod admin;
pub mod api;
pub mod backup;
pub mod config;
pub mod disk;
pub mod engine;
pub mod error;
pub mod identity;
pub mod join;
pub mod metrics;
pub mod node;
pub mod outage;
pub mod pull;
pub mod recent;
pub mod scan;
pub mod server;
pub mod store;

pub use config::Config;

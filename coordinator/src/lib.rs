//! pairdb-coordinator: the stateless quorum router serving `pairdb.CoordinatorService`.
//!
//! Code map: [`server`] wires everything; [`api`] is the gRPC edge; [`data`] is the quorum
//! write/read path with read repair, its replica calls through the fan-out in [`quorum`]; [`hints`] is hinted handoff; [`cluster`] holds the ring and
//! node health (topology and failure-detector workers); [`tenants`] caches tenant settings;
//! [`topology`] drives bootstrap / decommission / replace / cleanup under leases;
//! [`meta`] is the metadata store (PostgreSQL / SQLite behind one trait); [`config`],
//! [`auth`] authenticates bearer tokens and authorizes each method; [`tokens`] serves the
//! token RPCs; [`metrics`], [`error`].
//! *Invariant: the coordinator holds no durable state outside the metadata store, and the
//! read/write path touches the metadata store only to record hints.*

pub mod admission;
pub mod api;
pub mod auth;
pub mod backup;
pub mod batcher;
pub mod cluster;
pub mod config;
pub mod contexts;
pub mod data;
pub mod error;
pub mod gauges;
pub mod hints;
pub mod jobs;
pub mod meta;
pub mod metrics;
pub mod node_call;
pub mod quorum;
pub mod repair;
pub mod replication;
pub mod server;
pub mod tenants;
pub mod tokens;
pub mod topology;

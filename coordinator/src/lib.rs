//! pairdb-coordinator: the stateless quorum router serving `pairdb.CoordinatorService`.
//!
//! Code map: [`meta`] is the metadata store (PostgreSQL / SQLite behind one trait).
//! *Invariant: the coordinator holds no durable state outside the metadata store.*

pub mod meta;

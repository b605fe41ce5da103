//! Generated wire types and gRPC stubs for package `pairdb` (from `proto/pairdb/v1`).
//!
//! Only this module and [`crate::convert`] (plus each service's own `api` module) touch prost
//! types; everything else works on the plain domain types of [`crate::version`].

#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("pairdb");
}

/// Encoded `FileDescriptorSet` of every pairdb proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pairdb_descriptor");

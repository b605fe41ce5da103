//! Shared gRPC server pieces: server reflection advertising exactly the services a binary
//! serves, in both protocol versions (grpcurl before 1.9 and many other tools speak only
//! v1alpha), with the `google.rpc` descriptors so clients can decode `ErrorInfo` details.

use tonic_reflection::server::{
    Builder, Error, v1::ServerReflection as V1, v1::ServerReflectionServer as V1Server,
    v1alpha::ServerReflection as V1Alpha, v1alpha::ServerReflectionServer as V1AlphaServer,
};

fn builder(services: &[&str]) -> Builder<'static> {
    let mut b = Builder::configure()
        .register_encoded_file_descriptor_set(crate::api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for s in services {
        b = b.with_service_name(*s);
    }
    b
}

/// Reflection services (v1, v1alpha) advertising `services` plus health.
#[allow(clippy::type_complexity)]
pub fn reflection(
    services: &[&str],
) -> Result<(V1Server<impl V1>, V1AlphaServer<impl V1Alpha>), Error> {
    Ok((
        builder(services).build_v1()?,
        builder(services).build_v1alpha()?,
    ))
}

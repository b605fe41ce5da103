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

/// A limit on the requests a gRPC server works on at once: a request beyond it is answered at
/// once with RESOURCE_EXHAUSTED / OVERLOADED (never queued, so a flood cannot build an
/// unbounded backlog of waiting requests). Health checks are never refused, so probes keep
/// telling the truth under load. `on_refused` counts refusals (a metric).
#[derive(Clone)]
pub struct AdmissionLayer {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    limit: usize,
    on_refused: std::sync::Arc<dyn Fn() + Send + Sync>,
}

impl AdmissionLayer {
    pub fn new(limit: usize, on_refused: impl Fn() + Send + Sync + 'static) -> AdmissionLayer {
        AdmissionLayer {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            on_refused: std::sync::Arc::new(on_refused),
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] wraps around a server's routes.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S, ReqB, ResB> tower::Service<tonic::codegen::http::Request<ReqB>> for Admission<S>
where
    S: tower::Service<
            tonic::codegen::http::Request<ReqB>,
            Response = tonic::codegen::http::Response<ResB>,
        >,
    S::Future: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = tonic::codegen::http::Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<ReqB>) -> Self::Future {
        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
            return Box::pin(self.inner.call(req));
        }
        match self.layer.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let r = fut.await;
                    drop(permit);
                    r
                })
            }
            Err(_) => {
                (self.layer.on_refused)();
                let status = crate::Error::Overloaded(format!(
                    "the server is working on {} requests, its limit; retry later",
                    self.layer.limit
                ))
                .to_status();
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Admits calls to one gRPC service only from peers whose verified client certificate carries
/// one of `roles` (storage nodes: coordinator or storage-node), answering PERMISSION_DENIED
/// otherwise. Plaintext connections reach this only where the listener lets them in (TLS off,
/// or `tls.accept_plaintext` during a rolling enablement) and pass. Health and reflection are
/// not guarded (the listener already demanded a certificate from the cluster CA).
#[derive(Clone)]
pub struct RoleLayer {
    service_prefix: &'static str,
    roles: &'static [crate::tls::Role],
    on_refused: std::sync::Arc<dyn Fn() + Send + Sync>,
}

impl RoleLayer {
    pub fn new(
        service_prefix: &'static str,
        roles: &'static [crate::tls::Role],
        on_refused: impl Fn() + Send + Sync + 'static,
    ) -> RoleLayer {
        RoleLayer {
            service_prefix,
            roles,
            on_refused: std::sync::Arc::new(on_refused),
        }
    }

    /// Whether a connection's peer may call the guarded service.
    pub fn admits(&self, info: Option<&crate::tls::listen::PeerInfo>) -> Result<(), String> {
        let Some(info) = info else {
            // Not from a pairdb listener (in-process tests serving a router directly).
            return Ok(());
        };
        if !info.tls {
            return Ok(());
        }
        match &info.peer {
            Some(p) if self.roles.iter().any(|r| p.has_role(*r)) => Ok(()),
            Some(p) => Err(format!(
                "the client certificate {} carries none of the roles this service admits ({})",
                p.subject,
                self.roles
                    .iter()
                    .map(|r| r.uri())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => Err("this service needs a client certificate from the cluster CA".into()),
        }
    }
}

impl<S> tower::Layer<S> for RoleLayer {
    type Service = RoleGuard<S>;

    fn layer(&self, inner: S) -> RoleGuard<S> {
        RoleGuard {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RoleLayer`] wraps around a server's routes.
#[derive(Clone)]
pub struct RoleGuard<S> {
    inner: S,
    layer: RoleLayer,
}

impl<S, ReqB, ResB> tower::Service<tonic::codegen::http::Request<ReqB>> for RoleGuard<S>
where
    S: tower::Service<
            tonic::codegen::http::Request<ReqB>,
            Response = tonic::codegen::http::Response<ResB>,
        >,
    S::Future: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = tonic::codegen::http::Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<ReqB>) -> Self::Future {
        if !req.uri().path().starts_with(self.layer.service_prefix) {
            return Box::pin(self.inner.call(req));
        }
        match self
            .layer
            .admits(req.extensions().get::<crate::tls::listen::PeerInfo>())
        {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(why) => {
                (self.layer.on_refused)();
                let status = crate::Error::PermissionDenied(why).to_status();
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// How often gRPC health re-reads readiness.
pub const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps `grpc.health.v1` for the whole server (`""`) and for `service` SERVING while
/// `ready()` holds and NOT_SERVING otherwise, re-checked every [`HEALTH_INTERVAL`] until
/// `cancel` (then NOT_SERVING). Run it as a supervised worker.
pub async fn follow_readiness(
    reporter: tonic_health::server::HealthReporter,
    service: &'static str,
    ready: impl Fn() -> bool,
    cancel: tokio_util::sync::CancellationToken,
) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let now = !cancel.is_cancelled() && ready();
        if last != Some(now) {
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(service, status).await;
            if last.is_some() {
                tracing::info!(serving = now, "gRPC health changed");
            }
            last = Some(now);
        }
        if cancel.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
}

/// `grpc.health.v1` for a server whose readiness is `ready()`: the health service to add to
/// the server, SERVING or NOT_SERVING from `initially`, then kept in step by the supervised
/// `grpc-health` worker ([`follow_readiness`]).
pub async fn readiness_health(
    sup: &crate::worker::Supervisor,
    service: &'static str,
    initially: bool,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let status = if initially {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for s in ["", service] {
        reporter.set_service_status(s, status).await;
    }
    sup.worker("grpc-health", move |cancel| {
        follow_readiness(reporter.clone(), service, ready.clone(), cancel)
    });
    health
}

//! Security metrics shared by both binaries (registered in each one's registry):
//! `tls_certificate_expiry_timestamp_seconds{kind,subject}` (alert on it well before it
//! passes), `tls_connections_refused_total{reason}` (plaintext, handshake, timeout) and
//! `requests_denied_total{reason}` (role, unauthenticated, permission).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Material;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `cert` (this process's own) or `ca`.
    pub kind: &'static str,
    pub subject: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Default)]
pub struct SecurityMetrics {
    pub cert_expiry: Family<CertLabels, Gauge>,
    pub connections_refused: Family<ReasonLabels, Counter>,
    pub requests_denied: Family<ReasonLabels, Counter>,
}

impl SecurityMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "Expiry (Unix seconds) of each loaded certificate: this process's and the CA bundle's",
            self.cert_expiry.clone(),
        );
        registry.register(
            "tls_connections_refused",
            "Connections refused before any request: plaintext on a TLS port, failed or timed-out handshakes",
            self.connections_refused.clone(),
        );
        registry.register(
            "requests_denied",
            "Requests refused for their credentials: role (client certificate), unauthenticated, permission",
            self.requests_denied.clone(),
        );
    }

    /// The callback [`super::Tls::load`] runs after each load: the expiry gauges.
    pub fn on_loaded(&self) -> impl Fn(&Material) + Send + Sync + 'static {
        let fam = self.cert_expiry.clone();
        move |m: &Material| {
            fam.clear();
            for (kind, subject, not_after) in &m.expiry {
                fam.get_or_create(&CertLabels {
                    kind,
                    subject: subject.clone(),
                })
                .set(*not_after);
            }
        }
    }

    /// The callback a listener runs for each refused connection.
    pub fn on_refused(&self) -> Arc<dyn Fn(&'static str) + Send + Sync> {
        let fam = self.connections_refused.clone();
        Arc::new(move |reason| {
            fam.get_or_create(&ReasonLabels { reason }).inc();
        })
    }

    pub fn denied(&self, reason: &'static str) {
        self.requests_denied
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

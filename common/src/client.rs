//! Clients of `pairdb.CoordinatorService` as tools and tests build them: a channel (plaintext
//! or TLS) with a bearer token on every call.

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::api::pb::coordinator_service_client::CoordinatorServiceClient;
use crate::auth::BearerToken;
use crate::tls::Expect;
use crate::tls::connect::{self, ClientTls};

/// A coordinator client that sends a bearer token (or none) on every call.
pub type Coordinator = CoordinatorServiceClient<InterceptedService<Channel, BearerToken>>;

/// How a tool reaches a coordinator.
#[derive(Clone, Default)]
pub struct Dial {
    /// `host:port`, `http://host:port` or `https://host:port` (https: TLS).
    pub address: String,
    pub token: Option<String>,
    /// CA bundle that verifies the coordinator (turns TLS on).
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key (optional).
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl Dial {
    pub fn plaintext(address: impl Into<String>) -> Dial {
        Dial {
            address: address.into(),
            ..Dial::default()
        }
    }

    /// The TLS side of this dial.
    pub fn tls(&self) -> Result<ClientTls, String> {
        let https = self.address.starts_with("https://");
        match &self.ca {
            None if https => Err(format!(
                "{} is https: pass the CA bundle that signed the coordinator's certificate (--tls-ca or PAIRDB_TLS_CA)",
                self.address
            )),
            None => Ok(ClientTls::Off),
            Some(ca) => {
                let identity = match (&self.cert, &self.key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    (None, None) => None,
                    _ => return Err("--tls-cert and --tls-key go together".into()),
                };
                connect::tool_config(ca, identity, &Expect::any())
                    .map(ClientTls::Fixed)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// A connected client.
    pub async fn connect(&self) -> Result<Coordinator, String> {
        let tls = self.tls()?;
        let ep = connect::endpoint(&self.address)?
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(5));
        let ch = connect::channel(ep, tls)
            .await
            .map_err(|e| format!("connect to coordinator {}: {e}", self.address))?;
        self.wrap(ch)
    }

    /// A client over an existing channel, with this dial's token.
    pub fn wrap(&self, ch: Channel) -> Result<Coordinator, String> {
        let token = BearerToken::new(self.token.as_deref())?;
        Ok(CoordinatorServiceClient::with_interceptor(ch, token))
    }

    /// A raw channel (benchmarks that drive health and data over one connection).
    pub async fn channel(&self) -> Result<Channel, String> {
        let ep = connect::endpoint(&self.address)?.tcp_nodelay(true);
        connect::channel(ep, self.tls()?)
            .await
            .map_err(|e| format!("connect to coordinator {}: {e}", self.address))
    }
}

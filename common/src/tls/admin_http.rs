//! A minimal HTTP/1.1 client for the admin ports (plaintext, or TLS trusting the cluster CA),
//! used by `pairdbctl node maintenance` (the storage node's preStop hook), `pairdbctl cluster
//! health --probe` and the process tests. One request per connection (`Connection: close`);
//! the answer is at most [`MAX_ANSWER_BYTES`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Expect;

/// An admin answer larger than this is refused (health and metrics are far smaller).
pub const MAX_ANSWER_BYTES: u64 = 16 << 20;
/// Connect plus request plus answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach one admin port.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    /// `host:port`.
    pub addr: String,
    /// TLS trusting this CA bundle; `None`: plaintext.
    pub ca: Option<PathBuf>,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl AdminTarget {
    /// From `http://host:port` or `https://host:port` (or a bare `host:port`, TLS when `ca`
    /// is given).
    pub fn parse(url: &str, ca: Option<PathBuf>, token: Option<String>) -> AdminTarget {
        let (addr, tls) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(a), _) => (a, true),
            (_, Some(a)) => (a, false),
            _ => (url, ca.is_some()),
        };
        AdminTarget {
            addr: addr.trim_end_matches('/').to_string(),
            ca: if tls { ca } else { None },
            token,
        }
    }

    /// `GET path` → (status, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        self.request("GET", path).await
    }

    /// `POST path` with an empty JSON object → (status, body).
    pub async fn post(&self, path: &str) -> Result<(u16, String), String> {
        self.request("POST", path).await
    }

    pub async fn request(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        self.send(method, path, "{}", REQUEST_TIMEOUT).await
    }

    /// `method path` with a JSON `body`, allowed `timeout` in all (a long action such as an
    /// integrity scan answers only when it is done).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        tokio::time::timeout(timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| format!("{method} {}{path}: timed out", self.addr))?
            .map_err(|e| format!("{method} {}{path}: {e}", self.addr))
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let host = self
            .addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&self.addr);
        let auth = match &self.token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let Some(ca) = &self.ca else {
            return exchange_on(tcp, &req).await;
        };
        let cfg = super::connect::tool_config(ca, None, &Expect::any()).map_err(|e| e.0)?;
        let mut cfg = (*cfg).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("server name {host}: {e}"))?;
        let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange_on(s, &req).await
    }
}

async fn exchange_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &str,
) -> Result<(u16, String), String> {
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // A TLS close without close_notify still leaves the whole answer in `buf`.
    let _ = (&mut s).take(MAX_ANSWER_BYTES).read_to_end(&mut buf).await;
    parse_answer(&buf)
}

/// Status and body of a `Connection: close` answer (chunked bodies are de-chunked).
fn parse_answer(buf: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("no complete HTTP answer")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_answer(plain).unwrap(), (503, "hello".to_string()));
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).unwrap(), (200, "abcde".to_string()));
        assert!(parse_answer(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn urls_choose_tls() {
        let ca = Some(PathBuf::from("/ca.pem"));
        let t = AdminTarget::parse("https://127.0.0.1:9101/", ca.clone(), None);
        assert_eq!((t.addr.as_str(), t.ca.is_some()), ("127.0.0.1:9101", true));
        let t = AdminTarget::parse("http://127.0.0.1:9101", ca.clone(), None);
        assert!(t.ca.is_none());
        let t = AdminTarget::parse("127.0.0.1:9101", None, None);
        assert!(t.ca.is_none());
    }
}

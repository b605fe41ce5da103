//! A secure process cluster's material: CA, certificates, bootstrap admin token.

use anyhow::Result;

/// TLS and token material of a secure process cluster: a CA, a certificate per process, the
/// bootstrap admin token. The test process acts as a coordinator towards storage nodes.
pub struct Secure {
    pub dir: std::path::PathBuf,
    ca_cert: String,
    ca_key: String,
    pub token: String,
}

impl Secure {
    pub fn new(dir: &std::path::Path) -> Result<Secure> {
        use pairdb_common::tls::certs;
        let dir = dir.join("tls");
        let ca = certs::new_ca("test CA", 30)?;
        certs::write_pair(&dir, "ca", &ca)?;
        let s = Secure {
            dir,
            ca_cert: ca.cert_pem,
            ca_key: ca.key_pem,
            token: pairdb_common::auth::new_token().token,
        };
        s.issue(certs::LeafSpec::coordinator(
            "coordinator",
            &["127.0.0.1", "localhost"],
            30,
        ))?;
        Ok(s)
    }

    /// Issues (or reissues) the certificate `spec.common_name`.
    pub fn issue(&self, spec: pairdb_common::tls::certs::LeafSpec) -> Result<()> {
        let issued = pairdb_common::tls::certs::issue(&self.ca_cert, &self.ca_key, &spec)?;
        pairdb_common::tls::certs::write_pair(&self.dir, &spec.common_name, &issued)?;
        Ok(())
    }

    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.crt")
    }

    /// `PAIRDB_TLS_*` for the process whose certificate is `name`.
    pub fn env(&self, name: &str) -> Vec<(String, String)> {
        let f = |ext: &str| self.dir.join(format!("{name}.{ext}")).display().to_string();
        vec![
            ("PAIRDB_TLS_CERT".into(), f("crt")),
            ("PAIRDB_TLS_KEY".into(), f("key")),
            ("PAIRDB_TLS_CA".into(), self.ca().display().to_string()),
            ("PAIRDB_ADMIN_TOKEN".into(), self.token.clone()),
        ]
    }

    /// A client TLS configuration presenting the coordinator certificate, expecting `expect`.
    pub fn client_tls(
        &self,
        expect: &pairdb_common::tls::Expect,
    ) -> Result<pairdb_common::tls::connect::ClientTls> {
        let cfg = pairdb_common::tls::connect::tool_config(
            &self.ca(),
            Some((
                &self.dir.join("coordinator.crt"),
                &self.dir.join("coordinator.key"),
            )),
            expect,
        )?;
        Ok(pairdb_common::tls::connect::ClientTls::Fixed(cfg))
    }
}

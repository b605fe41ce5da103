//! Issuing a small cluster's certificates (rcgen, ECDSA P-256): a CA, and leaf certificates
//! carrying pairdb roles and node ids as URI SANs plus the host names and IPs they serve on.
//! Used by `pairdbctl certs`, `pairdbctl dev --tls` and the tests; production clusters may
//! use cert-manager instead (runbooks/security.md shows the Certificate resources).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::peer::{NODE_URI, Role};

/// A certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct IssueError(pub String);

fn err(e: impl std::fmt::Display) -> IssueError {
    IssueError(e.to_string())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    if days >= 0 {
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(days);
    } else {
        // Already expired (tests): valid for one day that ended `-days` days ago.
        params.not_after = now + time::Duration::days(days);
        params.not_before = params.not_after - time::Duration::days(1);
    }
}

/// A new self-signed CA valid for `days`.
pub fn new_ca(common_name: &str, days: i64) -> Result<Issued, IssueError> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "pairdb");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub roles: Vec<Role>,
    /// Storage nodes: `urn:pairdb:node:<id>`.
    pub node_id: Option<String>,
    /// DNS names and IP addresses the process is reached at.
    pub hosts: Vec<String>,
    /// Validity in days from now (negative: already expired).
    pub days: i64,
}

impl LeafSpec {
    /// A storage node's certificate (role storage-node, its node id, its hosts).
    pub fn storage_node(node_id: &str, hosts: &[&str], days: i64) -> LeafSpec {
        LeafSpec {
            common_name: node_id.to_string(),
            roles: vec![Role::StorageNode],
            node_id: Some(node_id.to_string()),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            days,
        }
    }

    /// A coordinator's certificate.
    pub fn coordinator(name: &str, hosts: &[&str], days: i64) -> LeafSpec {
        LeafSpec {
            common_name: name.to_string(),
            roles: vec![Role::Coordinator],
            node_id: None,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            days,
        }
    }

    /// A client certificate (no server host names).
    pub fn client(name: &str, days: i64) -> LeafSpec {
        LeafSpec {
            common_name: name.to_string(),
            roles: vec![Role::Client],
            node_id: None,
            hosts: vec![],
            days,
        }
    }
}

/// Issues `spec` under the CA whose certificate and key are given (PEM).
pub fn issue(ca_cert_pem: &str, ca_key_pem: &str, spec: &LeafSpec) -> Result<Issued, IssueError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(err)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(err)?;
    let mut params = CertificateParams::new(spec.hosts.clone()).map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, spec.common_name.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "pairdb");
    for r in &spec.roles {
        params
            .subject_alt_names
            .push(SanType::URI(r.uri().try_into().map_err(err)?));
    }
    if let Some(id) = &spec.node_id {
        params.subject_alt_names.push(SanType::URI(
            format!("{NODE_URI}{id}").try_into().map_err(err)?,
        ));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, spec.days);
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` (the key readable by its owner only).
/// Both are written to temporary names and renamed, so a reloading process never reads half
/// a file.
pub fn write_pair(dir: &Path, name: &str, issued: &Issued) -> std::io::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let tmp_key = dir.join(format!(".{name}.key.tmp"));
    std::fs::write(&tmp_key, &issued.key_pem)?;
    std::fs::set_permissions(&tmp_key, std::fs::Permissions::from_mode(0o600))?;
    let tmp_cert = dir.join(format!(".{name}.crt.tmp"));
    std::fs::write(&tmp_cert, &issued.cert_pem)?;
    std::fs::rename(&tmp_key, &key)?;
    std::fs::rename(&tmp_cert, &cert)?;
    Ok((cert, key))
}

//! Who a certificate speaks for. pairdb names roles and node identities in URI subject
//! alternative names, which cert-manager (`uris:`), `openssl` and `pairdbctl certs` can all
//! write:
//!
//! - `urn:pairdb:role:coordinator`, `urn:pairdb:role:storage-node`, `urn:pairdb:role:client`
//! - `urn:pairdb:node:<node_id>` on a storage node's certificate: the identity a coordinator
//!   checks before it trusts a node at a new address, and a node checks before it pulls from one.

use std::fmt;

use rustls::pki_types::CertificateDer;

/// URI SAN prefix of a role.
pub const ROLE_URI: &str = "urn:pairdb:role:";
/// URI SAN prefix of a storage node's id.
pub const NODE_URI: &str = "urn:pairdb:node:";

/// What a certificate may do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Routes requests to storage nodes and drives topology changes.
    Coordinator,
    /// Holds replicas; pulls ranges from other storage nodes.
    StorageNode,
    /// An application or operator client (never accepted on `StorageNodeService`).
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::StorageNode => "storage-node",
            Role::Client => "client",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "coordinator" => Some(Role::Coordinator),
            "storage-node" => Some(Role::StorageNode),
            "client" => Some(Role::Client),
            _ => None,
        }
    }

    /// The URI SAN naming this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI}{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a verified peer certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The certificate's subject, for logs and the audit trail.
    pub subject: String,
    pub roles: Vec<Role>,
    /// `urn:pairdb:node:<id>`, on storage node certificates.
    pub node_id: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct CertError(pub String);

impl Peer {
    /// Reads the identity out of a DER certificate (its chain already verified by rustls).
    pub fn from_der(der: &CertificateDer<'_>) -> Result<Peer, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| CertError(format!("parse: {e}")))?;
        let mut roles = Vec::new();
        let mut node_id = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name {
                    if let Some(r) = uri.strip_prefix(ROLE_URI).and_then(Role::parse) {
                        if !roles.contains(&r) {
                            roles.push(r);
                        }
                    } else if let Some(id) = uri.strip_prefix(NODE_URI) {
                        node_id = Some(id.to_string());
                    }
                }
            }
        }
        Ok(Peer {
            subject: cert.subject().to_string(),
            roles,
            node_id,
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// How the audit log names this peer.
    pub fn describe(&self) -> String {
        let roles: Vec<&str> = self.roles.iter().map(|r| r.as_str()).collect();
        match &self.node_id {
            Some(id) => format!("cert:{} [{}] node {id}", self.subject, roles.join(",")),
            None => format!("cert:{} [{}]", self.subject, roles.join(",")),
        }
    }
}

/// Checks that a verified server certificate is the one expected: a role, and, when a node
/// id is expected, that exact node.
pub fn check_expected(peer: &Peer, expect: &Expect) -> Result<(), String> {
    if let Some(role) = expect.role
        && !peer.has_role(role)
    {
        return Err(format!(
            "the certificate of {} does not carry role {role} ({})",
            peer.subject,
            role.uri()
        ));
    }
    if let Some(want) = &expect.node_id
        && peer.node_id.as_deref() != Some(want.as_str())
    {
        return Err(format!(
            "the certificate of {} names node {:?}, not {want:?}",
            peer.subject,
            peer.node_id.as_deref().unwrap_or("(none)")
        ));
    }
    Ok(())
}

/// The server a client expects to reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Expect {
    /// `None`: any certificate from the CA for the host (tools reaching a coordinator whose
    /// public certificate may come from another issuer's template).
    pub role: Option<Role>,
    pub node_id: Option<String>,
}

impl Expect {
    /// Any server the CA vouches for under the host name dialed.
    pub fn any() -> Expect {
        Expect {
            role: None,
            node_id: None,
        }
    }

    /// Storage node `node_id` (`None`: any storage node).
    pub fn storage_node(node_id: Option<&str>) -> Expect {
        Expect {
            role: Some(Role::StorageNode),
            node_id: node_id.map(str::to_string),
        }
    }
}

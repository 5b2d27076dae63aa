//! Throwaway certificates for `corekv dev --tls` and the tests (rcgen): a CA, one certificate
//! per node (naming its host and `node-{id}.corekv`, good for serving and for dialing peers),
//! and client certificates whose subject common name is the user. Production certificates
//! come from the operator's own CA (RUNBOOK "TLS").

use std::path::Path;

use corekv_types::ids::NodeId;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl Issued {
    /// Writes `NAME.pem` and `NAME-key.pem` into `dir` (the key readable by its owner only).
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<()> {
        std::fs::write(dir.join(format!("{name}.pem")), &self.cert_pem)?;
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&key, &self.key_pem)?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
    }
}

/// A certificate authority that issues node and client certificates.
pub struct Authority {
    cert: Certificate,
    key: KeyPair,
}

/// Certificate validity, as calendar years (from 1 January of the first to 1 January of
/// the second).
pub type Years = (i32, i32);

impl Authority {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Authority, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority { cert, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Node `id`'s certificate: DNS name `node-{id}.corekv` and every host in `hosts` (IP
    /// addresses or DNS names), for serving and for dialing peers.
    pub fn node(
        &self,
        id: NodeId,
        hosts: &[&str],
        years: Option<Years>,
    ) -> Result<Issued, rcgen::Error> {
        let mut names = vec![corekv_types::tls::node_name(id)];
        names.extend(hosts.iter().map(|h| h.to_string()));
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, format!("corekv node {id}"));
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, years)
    }

    /// A client certificate for `user` (its subject's common name).
    pub fn client(&self, user: &str, years: Option<Years>) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, years)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        years: Option<Years>,
    ) -> Result<Issued, rcgen::Error> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if let Some((from, to)) = years {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn not_after(issued: &Issued) -> i64 {
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        corekv_types::tls::not_after(&der).unwrap()
    }

    // Shows: a node certificate names the node for its peers and its host for clients, and
    // the expiry read from a certificate is the one it was issued with (UTCTime before 2050,
    // GeneralizedTime after).
    #[test]
    fn node_names_and_expiry() {
        let ca = Authority::new("t").unwrap();
        let node = ca.node(NodeId(4), &["127.0.0.1", "db4.example"], Some((2020, 2040))).unwrap();
        let der = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
        for name in ["node-4.corekv", "127.0.0.1", "db4.example"] {
            corekv_types::tls::cert_names(&der, name).unwrap();
        }
        let wrong = corekv_types::tls::cert_names(&der, "node-5.corekv").unwrap_err();
        assert!(wrong.contains("node-4.corekv"), "{wrong}");
        assert_eq!(not_after(&node), 2_208_988_800); // 2040-01-01T00:00:00Z
        let late = ca.client("u", Some((2020, 2051))).unwrap();
        assert_eq!(not_after(&late), 2_556_144_000); // 2051-01-01T00:00:00Z
        assert!(corekv_types::tls::not_after(b"\x30\x03\x02\x01").is_err());
        // A client certificate's subject names its user.
        let client = ca.client("billing-svc", None).unwrap();
        let der = CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap();
        let user = corekv_types::tls::subject_common_name(&der);
        assert_eq!(user.as_deref(), Some("billing-svc"));
        assert_eq!(corekv_types::tls::subject_common_name(b"\x30\x82\xff\xff"), None);
    }
}

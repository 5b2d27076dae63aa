//! rustls configurations from PEM files, one way for the server and the client (the
//! `tls` feature).
//!
//! Every configuration uses the same crypto provider ([`provider`]: rustls's *ring* backend)
//! and the TLS versions of the registry's `min_version`. A node's certificate names it by a
//! DNS name, `node-{id}.corekv` ([`node_name`]), besides the host names clients reach it by:
//! peers check that name both ways, so a host holding node 3's certificate cannot pose as
//! node 2 (DESIGN.md §9).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::ids::NodeId;
use crate::registry::{ClientCerts, TlsVersion};

/// The crypto provider of every corekv TLS configuration: *ring*, with every cipher suite
/// and key exchange group it has (X25519, P-256, P-384; no post-quantum group).
pub fn provider() -> Arc<CryptoProvider> {
    // rustls marks `ring::default_provider` deprecated because ring has no post-quantum key
    // exchange; this is the same provider, spelled out.
    Arc::new(CryptoProvider {
        cipher_suites: rustls::crypto::ring::ALL_CIPHER_SUITES.to_vec(),
        kx_groups: rustls::crypto::ring::ALL_KX_GROUPS.to_vec(),
        ..ring_base()
    })
}

#[allow(deprecated)]
fn ring_base() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The DNS name a node's certificate carries to prove which node it is.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.corekv")
}

/// The TLS versions spoken from `min` up.
pub fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    static BOTH: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => &BOTH,
        TlsVersion::Tls13 => &ONLY_13,
    }
}

/// The certificates of a PEM file, in order.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The trusted CA certificates of a PEM file.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// What a client (or a node dialing a peer) uses: nodes checked against `ca`, and the
/// certificate and key shown to them, if any.
pub fn client_config(
    ca: &Path,
    cert_and_key: Option<(&Path, &Path)>,
    min: TlsVersion,
) -> Result<ClientConfig, String> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(min))
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match cert_and_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display())),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// What a node's listener uses: its certificate and key, and client certificates checked
/// against `ca` (required, or checked when shown).
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    client_certs: ClientCerts,
    min: TlsVersion,
) -> Result<ServerConfig, String> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider.clone());
    let verifier = match client_certs {
        ClientCerts::Required => verifier,
        ClientCerts::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(|e| format!("{}: {e}", ca.display()))?;
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(min))
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))
}

/// Whether the (already verified) certificate `der` is valid for the DNS name `name`.
pub fn cert_names(der: &CertificateDer<'_>, name: &str) -> Result<(), String> {
    let cert =
        webpki::EndEntityCert::try_from(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let wanted = ServerName::try_from(name).map_err(|e| format!("{name}: {e}"))?;
    cert.verify_is_valid_for_subject_name(&wanted).map_err(|_| {
        let names: Vec<&str> = cert.valid_dns_names().collect();
        format!(
            "the certificate is not for {name} (it names {})",
            if names.is_empty() { "no DNS name".to_string() } else { names.join(", ") }
        )
    })
}

/// The server name a client checks a node's certificate against: its host (an IP address or
/// a DNS name).
pub fn host_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("host {host:?}: {e}"))
}

/// When the certificate `der` stops being valid (its `notAfter`), in seconds since the Unix
/// epoch: read from the DER walk Certificate → TBSCertificate → validity (RFC 5280 §4.1).
pub fn not_after(der: &[u8]) -> Result<i64, String> {
    let bad = |what: &str| format!("certificate: {what}");
    let (_, certificate, _) = der_item(der).ok_or_else(|| bad("not DER"))?;
    let (_, mut tbs, _) = der_item(certificate).ok_or_else(|| bad("no TBSCertificate"))?;
    // [0] version (optional), serialNumber, signature, issuer: skipped.
    if tbs.first() == Some(&0xA0) {
        tbs = der_item(tbs).ok_or_else(|| bad("bad version"))?.2;
    }
    for field in ["serial number", "signature algorithm", "issuer"] {
        tbs = der_item(tbs).ok_or_else(|| bad(field))?.2;
    }
    let (_, validity, _) = der_item(tbs).ok_or_else(|| bad("no validity"))?;
    let after = der_item(validity).ok_or_else(|| bad("no notBefore"))?.2;
    let (tag, time, _) = der_item(after).ok_or_else(|| bad("no notAfter"))?;
    let text = std::str::from_utf8(time).map_err(|_| bad("notAfter is not text"))?;
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        text.get(range).filter(|s| s.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
    };
    // UTCTime YYMMDDHHMMSSZ (years 1950-2049), GeneralizedTime YYYYMMDDHHMMSSZ.
    let (year, at) = match tag {
        0x17 => (digits(0..2).map(|y| if y >= 50 { 1900 + y } else { 2000 + y }), 2),
        0x18 => (digits(0..4), 4),
        _ => return Err(bad("notAfter is not a time")),
    };
    let field = |i: usize| digits(at + 2 * i..at + 2 * i + 2);
    match (year, field(0), field(1), field(2), field(3), field(4)) {
        (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(s)) if text.ends_with('Z') => {
            Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
        }
        _ => Err(bad(&format!("notAfter {text:?} is not a UTC time"))),
    }
}

/// One DER item at the start of `bytes`: (tag, contents, the bytes after it).
fn der_item(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Days from 1970-01-01 to the date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first common name (OID 2.5.4.3) of the certificate `der`'s subject: the user a client
/// certificate names.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    let (_, certificate, _) = der_item(der)?;
    let (_, mut tbs, _) = der_item(certificate)?;
    if tbs.first() == Some(&0xA0) {
        tbs = der_item(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity: skipped; then the subject.
    for _ in 0..4 {
        tbs = der_item(tbs)?.2;
    }
    let (_, mut names, _) = der_item(tbs)?;
    while !names.is_empty() {
        let (_, set, rest) = der_item(names)?;
        names = rest;
        let mut set = set;
        while !set.is_empty() {
            let (_, pair, rest) = der_item(set)?;
            set = rest;
            let (oid_tag, oid, value) = der_item(pair)?;
            if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = der_item(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

//! A TLS test cluster: a CA (rcgen, through `corekv_server::dev::certs`), a certificate per
//! node, and the registry's `[tls]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use corekv_client::registry::TlsVersion;
use corekv_client::TlsConfig;
use corekv_server::dev::certs::{Authority, Issued};
use corekv_types::ids::NodeId;

use super::TestCluster;

/// A prepared, TLS-configured cluster's files.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Authority,
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a client certificate named `name` for `user`; returns (cert, key) paths.
    pub fn client(
        &self,
        ca: &Authority,
        name: &str,
        user: &str,
        years: Option<(i32, i32)>,
    ) -> (PathBuf, PathBuf) {
        ca.client(user, years).expect("client certificate").write(&self.dir, name).expect("write");
        (self.path(&format!("{name}.pem")), self.path(&format!("{name}-key.pem")))
    }
}

/// A 3-node, 2-shard cluster with TLS on every port; the harness's client and HTTP use the
/// `app` client certificate.
pub fn tls_cluster() -> (TestCluster, Pki) {
    tls_cluster_with(|_| String::new(), "app")
}

/// [`tls_cluster`] whose registry also gets what `extra` makes of the certificates' folder,
/// and whose harness client shows a certificate for `user`.
pub fn tls_cluster_with(extra: impl FnOnce(&Path) -> String, user: &str) -> (TestCluster, Pki) {
    let mut cluster = TestCluster::prepare(3, 2, &[]);
    let dir = cluster.dir.path().join("tls");
    std::fs::create_dir_all(&dir).expect("tls dir");
    let ca = Authority::new("test CA").expect("CA");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write CA");
    for id in 1..=3 {
        let issued: Issued = ca.node(NodeId(id), &["127.0.0.1"], None).expect("node certificate");
        issued.write(&dir, &format!("node-{id}")).expect("write");
    }
    let pki = Pki { dir, ca };
    cluster.add_to_registry(&format!(
        "[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/node-{{id}}.pem\"\nkey = \"{0}/node-{{id}}-key.pem\"\n{1}",
        pki.dir.display(),
        extra(&pki.dir)
    ));
    let (cert, key) = pki.client(&pki.ca, user, user, None);
    cluster.client_tls = Some(tls_config(&pki.path("ca.pem"), Some((&cert, &key))));
    cluster.http_tls = Some(Arc::new(
        corekv_types::tls::client_config(
            &pki.path("ca.pem"),
            Some((&cert, &key)),
            TlsVersion::Tls13,
        )
        .expect("HTTP TLS"),
    ));
    cluster.launch();
    (cluster, pki)
}

pub fn tls_config(ca: &Path, cert_and_key: Option<(&PathBuf, &PathBuf)>) -> TlsConfig {
    let cert_and_key = cert_and_key.map(|(c, k)| (c.as_path(), k.as_path()));
    TlsConfig::from_files(ca, cert_and_key, TlsVersion::Tls13).expect("TLS config")
}

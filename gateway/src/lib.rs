//! corekv's HTTP/JSON API, served by a stateless gateway: `corekv gateway --registry FILE
//! --listen ADDR`. Any number of gateways can run side by side behind a load balancer; each
//! holds nothing but connections and caches. The client crate inside does the routing,
//! leader discovery, retries and the handling of writes whose outcome is unknown, exactly as
//! for a Rust service.
//!
//! - [`api`]: the `/v1/` endpoints: keys, listings, transactions, leases.
//! - [`watch`]: `/v1/watch/...` as server-sent events, resumable with `Last-Event-ID`.
//! - [`error`]: the JSON errors, their stable codes and HTTP statuses.
//! - [`serve`]: the accept loop: connection limit, TLS, graceful shutdown.
//! - [`metrics`]: what `/metrics` shows.
//!
//! `openapi.json` (served at `/v1/openapi.json`) documents the API; a test walks it against
//! a running gateway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use corekv_client::registry::Registry;
use corekv_client::{Client, ClientConfig, TlsConfig};
use tokio::sync::{watch as signal, Semaphore};

pub mod api;
pub mod error;
pub mod metrics;
pub mod serve;
pub mod watch;

/// The OpenAPI document of the API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Clients kept for callers (tokens, certificate users): one each, the oldest dropped past
/// this many.
const CALLER_CLIENTS_MAX: usize = 1024;

/// `corekv gateway`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// The cluster's registry file (its nodes seed the gateway; members added since are
    /// learned from them) [default: $COREKV_REGISTRY, else ./corekv.toml].
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Deadline of one request to the cluster (a watch has none).
    #[arg(long, default_value = "5s", value_parser = corekv_client::text::parse_duration)]
    pub timeout: Duration,
    /// Most HTTP connections at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Most watches (server-sent event streams) at once; more are answered 503.
    #[arg(long, default_value_t = 1024)]
    pub max_watches: usize,
    /// Largest request body in bytes (a value is at most 1 MiB; a transaction's JSON may be
    /// larger).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body: usize,
    /// Memory for request bodies being read or sent, all requests together, in MiB; a
    /// request past it is answered 503 (each counts its Content-Length, else --max-body).
    #[arg(long, default_value_t = 256)]
    pub max_body_memory: usize,
    /// How long a connection may take to send its TLS handshake, or a request's head (and a
    /// new connection its first bytes).
    #[arg(long, default_value = "30s", value_parser = corekv_client::text::parse_duration)]
    pub head_timeout: Duration,
    /// Accept bearer tokens over plaintext HTTP (behind a proxy that terminates TLS);
    /// otherwise a token reaches only an HTTPS gateway (--tls-cert).
    #[arg(long)]
    pub plaintext_tokens: bool,
    /// How often a watch stream sends a heartbeat comment while nothing changes.
    #[arg(long, default_value = "15s", value_parser = corekv_client::text::parse_duration)]
    pub heartbeat: Duration,
    /// Serve HTTPS with this certificate chain (PEM); with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Ask HTTPS clients for a certificate and check it against these CA certificate(s)
    /// (PEM): a request that shows one acts as its subject's user (the gateway's own user,
    /// --cert, needs a role with `proxy = true`). A bearer token wins over it. Every
    /// certificate this CA signs acts as the user its subject names: trust it as much as the
    /// cluster's CA.
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// CA certificate(s) (PEM) of the cluster's nodes, if not the registry's `[tls]` CA.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// The gateway's own client certificate to the nodes (PEM); with --cert-key. Requests
    /// that carry no bearer token act as its user.
    #[arg(long, requires = "cert_key")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, requires = "cert")]
    pub cert_key: Option<PathBuf>,
    /// Threads serving requests: 0 for one per CPU; 1 runs the whole gateway on one thread
    /// (no hand-offs between threads: the cheapest per request where CPUs are shared).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Log filter (`RUST_LOG` syntax).
    #[arg(long, default_value = "info")]
    pub log: String,
}

/// What every request handler shares.
pub struct Gateway {
    config: ClientConfig,
    /// The client of requests without a token (the gateway's own identity, if any).
    anonymous: Client,
    /// Clients of bearer tokens and of the users of client certificates: each
    /// authenticates to the nodes as its user.
    by_caller: Mutex<CallerClients>,
    /// Watches open at once.
    pub(crate) watches: Arc<Semaphore>,
    pub(crate) max_body: usize,
    /// Request bodies held, in KiB (`--max-body-memory`), and its size.
    pub(crate) body_memory: Arc<Semaphore>,
    pub(crate) body_memory_kib: usize,
    pub(crate) heartbeat: Duration,
    /// Bearer tokens are taken over plaintext HTTP (`--plaintext-tokens`, or HTTPS serving).
    pub(crate) tokens_allowed: bool,
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// Turns true when the gateway is shutting down: watch streams end with a final event.
    pub(crate) shutdown: signal::Receiver<bool>,
}

#[derive(Default)]
struct CallerClients {
    /// Each caller's client, and when it was last used (a count of uses).
    clients: HashMap<Identity, (Client, u64)>,
    uses: u64,
}

/// Who a request is, as the nodes will be told.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A bearer token: the nodes look up its user.
    Token(String),
    /// The user of a client certificate the gateway verified: the gateway acts for it.
    User(String),
}

impl Gateway {
    /// A gateway for the cluster `config` names. `shutdown` turns true when it stops.
    pub fn new(
        config: ClientConfig,
        args: &GatewayArgs,
        shutdown: signal::Receiver<bool>,
    ) -> Gateway {
        let body_memory_kib = args.max_body_memory.saturating_mul(1024).min(Semaphore::MAX_PERMITS);
        Gateway {
            anonymous: Client::connect(config.clone()),
            config,
            by_caller: Mutex::default(),
            watches: Arc::new(Semaphore::new(args.max_watches)),
            max_body: args.max_body,
            body_memory: Arc::new(Semaphore::new(body_memory_kib)),
            body_memory_kib,
            heartbeat: args.heartbeat,
            tokens_allowed: args.plaintext_tokens || args.tls_cert.is_some(),
            metrics: Arc::new(metrics::Metrics::new()),
            shutdown,
        }
    }

    /// The client a request acts through: its caller's, or the gateway's own. Past
    /// [`CALLER_CLIENTS_MAX`] callers, the one unused longest is dropped.
    pub(crate) fn client(&self, caller: Option<&Identity>) -> Client {
        let Some(caller) = caller else { return self.anonymous.clone() };
        let mut cache = self.by_caller.lock().unwrap_or_else(|e| e.into_inner());
        cache.uses += 1;
        let now = cache.uses;
        if let Some((client, used)) = cache.clients.get_mut(caller) {
            *used = now;
            return client.clone();
        }
        if cache.clients.len() >= CALLER_CLIENTS_MAX {
            let oldest = cache.clients.iter().min_by_key(|(_, (_, used))| *used);
            if let Some(oldest) = oldest.map(|(identity, _)| identity.clone()) {
                cache.clients.remove(&oldest);
            }
        }
        let mut config = self.config.clone();
        match caller {
            Identity::Token(token) => config.token = Some(token.clone()),
            Identity::User(user) => config.act_as = Some(user.clone()),
        }
        let client = Client::connect(config);
        cache.clients.insert(caller.clone(), (client.clone(), now));
        client
    }
}

/// The client configuration the flags describe.
pub fn client_config(args: &GatewayArgs) -> anyhow::Result<ClientConfig> {
    let path = args
        .registry
        .clone()
        .or_else(|| std::env::var_os("COREKV_REGISTRY").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("corekv.toml"));
    let registry = Registry::load(&path)?;
    let tls = TlsConfig::from_command_line(
        &registry,
        args.cacert.as_deref(),
        args.cert.as_deref(),
        args.cert_key.as_deref(),
    )?;
    if args.client_ca.is_some() && args.cert.is_none() {
        anyhow::bail!(
            "--client-ca: acting for the users of callers' certificates needs the gateway's \
             own certificate (--cert, --cert-key) for a user whose role has proxy = true"
        );
    }
    if args.client_ca.is_some() && tls.is_none() {
        anyhow::bail!(
            "--client-ca: acting for the users of callers' certificates needs TLS to the nodes \
             (the registry file has no [tls] section and no --cacert was given)"
        );
    }
    let mut config = ClientConfig::new(registry);
    config.tls = tls;
    config.timeout = args.timeout;
    Ok(config)
}

/// Runs the gateway until SIGINT or SIGTERM, then ends watch streams with a final event and
/// waits (up to 10 s) for requests in flight.
pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let config = client_config(&args)?;
    let tls = serve::tls_acceptor(&args)?;
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
    .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let (stop, shutdown) = signal::channel(false);
        let gateway = Arc::new(Gateway::new(config, &args, shutdown.clone()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(
            "gateway for cluster {:?} serving {scheme}://{}",
            gateway.config.registry.cluster,
            listener.local_addr()?
        );
        let server = tokio::spawn(serve::serve(
            listener,
            tls,
            api::router(gateway.clone()),
            (args.max_connections, args.head_timeout),
            shutdown,
            gateway.metrics.clone(),
        ));
        serve::wait_for_signal().await;
        tracing::info!("shutting down: ending watch streams, finishing requests");
        let _ = stop.send(true);
        server.await.context("the server task")?;
        Ok(())
    })
}

//! Starting the whole server: store, engine and HTTP API, as `switchboard serve` does.
//!
//! Tests and the demo start the server through [`start`] too, so they run the production path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::controller::{self, AppState, CallerAuth};
use crate::engine::{Engine, EngineConfig, StartError};
use crate::metadata::Loader;
use crate::offload::Scanner;
use crate::queue::{SqliteStore, Store};

/// Everything `serve` is told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub metadata_dir: PathBuf,
    /// `sqlite://PATH`.
    pub db_url: String,
    pub listen: SocketAddr,
    pub max_concurrent_callouts: usize,
    pub auth: CallerAuth,
    pub body_limit: usize,
    /// The header read timeout and the cap on open connections of the HTTP API.
    pub connections: controller::ConnectionLimits,
    /// Uploads to `POST /v1/files` at once; more are answered `503`.
    pub max_concurrent_uploads: usize,
    pub shutdown_grace: Duration,
    /// Run callouts (off: accept and store them only).
    pub dispatch: bool,
    /// Where uploaded files are scanned before their reference is handed out; `None`: not
    /// scanned.
    pub scan: Option<Scanner>,
    /// How often expired file references are looked for (their objects deleted).
    pub sweep_interval: Duration,
    /// Shortest lease of a claim ([`EngineConfig::min_lease`]).
    pub min_lease: Duration,
}

impl ServerConfig {
    pub fn new(metadata_dir: impl Into<PathBuf>, db_url: impl Into<String>) -> ServerConfig {
        ServerConfig {
            metadata_dir: metadata_dir.into(),
            db_url: db_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_concurrent_callouts: 25,
            auth: CallerAuth::Open,
            body_limit: controller::DEFAULT_BODY_LIMIT,
            connections: controller::ConnectionLimits::default(),
            max_concurrent_uploads: controller::DEFAULT_MAX_CONCURRENT_UPLOADS,
            shutdown_grace: Duration::from_secs(30),
            dispatch: true,
            scan: None,
            sweep_interval: EngineConfig::default().sweep_interval,
            min_lease: EngineConfig::default().min_lease,
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the database {url}: {source}")]
    Store {
        url: String,
        source: crate::queue::StoreError,
    },
    #[error(transparent)]
    Engine(#[from] StartError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub engine: Engine,
    stop: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Stops claiming callouts and accepting requests at once (long polls answer with what
    /// they have), lets the HTTP connections drain for up to the grace period, then stops the
    /// engine: in-flight calls finish within the grace period, the rest are released.
    pub async fn stop(self) {
        self.engine.begin_shutdown();
        self.stop.cancel();
        let grace = self.engine.config().shutdown_grace;
        let abort = self.http.abort_handle();
        if tokio::time::timeout(grace, self.http).await.is_err() {
            tracing::warn!("HTTP connections still open after the grace period are closed");
            abort.abort();
        }
        self.engine.shutdown().await;
    }

    /// A token that stops the server when cancelled (signal handlers use it).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the server was told to stop, then stops it.
    pub async fn run_until_stopped(self) {
        self.stop.cancelled().await;
        self.stop().await;
    }
}

/// Opens the store, starts the engine and serves the API.
///
/// # Errors
/// The database, the metadata or the address cannot be used.
pub async fn start(config: ServerConfig, loader: Loader) -> Result<Server, ServeError> {
    let store = SqliteStore::open(&config.db_url)
        .await
        .map_err(|source| ServeError::Store {
            url: config.db_url.clone(),
            source,
        })?;
    start_with_store(config, Arc::new(store), loader).await
}

/// [`start`] on a store already opened (a benchmark wraps the store to count its commits).
///
/// # Errors
/// The metadata or the address cannot be used.
pub async fn start_with_store(
    config: ServerConfig,
    store: Arc<dyn Store>,
    loader: Loader,
) -> Result<Server, ServeError> {
    let engine_config = EngineConfig {
        metadata_dir: config.metadata_dir.clone(),
        max_concurrent_callouts: config.max_concurrent_callouts,
        shutdown_grace: config.shutdown_grace,
        dispatch: config.dispatch,
        scan: config.scan.clone(),
        sweep_interval: config.sweep_interval,
        min_lease: config.min_lease,
        ..EngineConfig::default()
    };
    let engine = Engine::start(engine_config, store, loader).await?;
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(source) => {
            engine.shutdown().await;
            return Err(ServeError::Listen {
                addr: config.listen,
                source,
            });
        }
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    let state = AppState {
        engine: engine.clone(),
        auth: config.auth.clone(),
        body_limit: config.body_limit,
        uploads: Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_uploads.max(1),
        )),
    };
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let http = tokio::spawn(controller::serve(
        listener,
        state,
        config.connections,
        async move { stopped.cancelled().await },
    ));
    Ok(Server {
        addr,
        engine,
        stop,
        http,
    })
}

//! Assembles a running coordinator: log, driver, recovery and the HTTP API on a bound listener.

use crate::api::{self, AppState, Metrics};
use crate::driver::{Driver, DriverSettings};
use crate::log::{AnyLog, LogError};
use crate::recovery;
use crate::service::{Coordinator, DEFAULT_ACK_WAIT};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7800";
/// Default decision log.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://twopc.db";
/// Default time between recovery rounds.
pub const DEFAULT_RECOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// Settings of a coordinator server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Decision log URL (`sqlite://PATH` or `postgres://...`).
    pub database_url: String,
    /// Base URL sent to participants for inquiries; derived from the bound address if absent.
    pub advertise_url: Option<String>,
    /// Time between recovery rounds.
    pub recovery_interval: Duration,
    /// How long a commit call waits for acknowledgements after the decision.
    pub ack_wait: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            advertise_url: None,
            recovery_interval: DEFAULT_RECOVERY_INTERVAL,
            ack_wait: DEFAULT_ACK_WAIT,
        }
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("failed binding to address '{address}' given by --listen / TWOPC_LISTEN: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The decision log could not be opened.
    #[error("cannot open the decision log given by --database / TWOPC_DATABASE_URL: {0}")]
    Log(#[from] LogError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// A coordinator bound to its address, ready to run.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    coordinator: Arc<Coordinator<AnyLog>>,
    config: ServerConfig,
    base_url: String,
}

impl Server {
    /// Opens the log and binds the listener.
    pub async fn build(config: ServerConfig) -> Result<Self, ServerError> {
        let log = AnyLog::connect(&config.database_url).await?;
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    address: config.listen.clone(),
                    source,
                })?;
        let local = listener.local_addr().map_err(ServerError::Serve)?;
        let base_url = format!("http://{}", advertised_addr(local));
        let advertise_url = config.advertise_url.clone().unwrap_or_else(|| {
            if local.ip().is_unspecified() {
                warn!(
                    "listening on {local}; participants will be told to inquire at {base_url}: set --advertise-url if they run on other hosts"
                );
            }
            base_url.clone()
        });
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        let driver = Driver::new(
            Arc::new(log),
            http,
            DriverSettings {
                advertise_url: advertise_url.trim_end_matches('/').to_owned(),
            },
        );
        let coordinator = Coordinator::new(Arc::new(driver), config.ack_wait);
        Ok(Self {
            listener,
            coordinator,
            config,
            base_url,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener.local_addr().map_err(ServerError::Serve)
    }

    /// `http://ADDR` of the bound address.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The coordinator (for in-process use, e.g. the demo).
    pub fn coordinator(&self) -> &Arc<Coordinator<AnyLog>> {
        &self.coordinator
    }

    /// Recovers unfinished transactions, then serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let recovery = tokio::spawn(recovery::run(
            self.coordinator.clone(),
            self.config.recovery_interval,
            wait_for_stop(stop_rx.clone()),
        ));
        let state = Arc::new(AppState {
            coordinator: self.coordinator.clone(),
            metrics: Metrics::default(),
        });
        info!(address = %self.base_url, database = %redact(&self.config.database_url), "coordinator listening");
        let served = axum::serve(self.listener, api::router(state))
            .with_graceful_shutdown(async move {
                shutdown.await;
                info!("shutting down");
            })
            .await;
        let _ = stop_tx.send(true);
        let _ = recovery.await;
        served.map_err(ServerError::Serve)
    }
}

async fn wait_for_stop(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn advertised_addr(local: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], local.port()))
    } else {
        local
    }
}

/// A database URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

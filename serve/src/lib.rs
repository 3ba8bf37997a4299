//! Lethe as a local service: one long-lived [`Lethe`] behind a versioned REST API (`/v1`) and an
//! MCP server, over stdio ([`Service::mcp_stdio`]) or streamable HTTP (`/mcp` on the same port).
//!
//! Every handler runs the memory's blocking work on tokio's blocking pool. Appends, contexts,
//! recalls and pins share the memory (`&Lethe`: the store serialises its writers, so concurrent
//! appends to one scope keep their order and lose nothing); maintenance and compaction take it
//! alone. An append is flushed to disk before it is acknowledged, so a server killed at any point
//! keeps every turn it answered for.
//!
//! ```
//! use lethe_serve::{Service, ServeOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let memory = lethe::Lethe::builder(dir.path()).reader(lethe::Reader::None).build()?;
//! let service = Service::new(memory);
//! let options = ServeOptions::default(); // 127.0.0.1:8750, no token
//! let router = service.router(&options); // an axum Router: mount it, or `Service::run` it
//! # let _ = router;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod api;
mod mcp;
mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lethe::Lethe;

pub use api::ApiError;

/// The address `memctl serve` binds by default (loopback only).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8750";

/// The largest request body accepted by default (bytes); larger ones get 413.
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;

/// How the service listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen. Any address other than loopback needs a `token`.
    pub addr: SocketAddr,
    /// A bearer token every request must carry (`Authorization: Bearer ...`) when set.
    pub token: Option<String>,
    /// The largest request body in bytes (413 above it).
    pub body_limit: usize,
    /// Run [`Lethe::maintain`] this often in the background (`None`: only when asked).
    pub maintain_every: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR.parse().expect("valid default address"),
            token: None,
            body_limit: DEFAULT_BODY_LIMIT,
            maintain_every: Some(Duration::from_secs(60)),
        }
    }
}

impl ServeOptions {
    /// Refuses a non-loopback address without a token, and an empty token.
    pub fn check(&self) -> Result<(), ServeError> {
        if matches!(&self.token, Some(t) if t.trim().is_empty()) {
            return Err(ServeError::Config("the token is empty".into()));
        }
        if !self.addr.ip().is_loopback() && self.token.is_none() {
            return Err(ServeError::Config(format!(
                "refusing to listen on {} without a token: anyone who can reach it could read \
                 and write the memory. Give --token-file FILE, or bind 127.0.0.1",
                self.addr
            )));
        }
        Ok(())
    }
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The options do not make a safe service.
    #[error("{0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The memory failed (at shutdown's flush).
    #[error("the memory failed: {0}")]
    Memory(String),
}

/// One memory shared by every handler, REST and MCP alike. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
}

struct Shared {
    lethe: RwLock<Lethe>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch: the service's clock for appends, reads and maintenance.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Service {
    /// Serves `lethe`.
    pub fn new(lethe: Lethe) -> Self {
        Self {
            shared: Arc::new(Shared {
                lethe: RwLock::new(lethe),
            }),
        }
    }

    /// Runs `f` on the blocking pool with the memory shared (appends and reads).
    pub(crate) async fn shared<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Lethe) -> Result<T, ApiError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let lethe = shared.lethe.read().unwrap_or_else(|p| p.into_inner());
            f(&lethe)
        })
        .await
        .map_err(ApiError::panicked)?
    }

    /// Runs `f` on the blocking pool with the memory alone (maintenance).
    pub(crate) async fn exclusive<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Lethe) -> Result<T, ApiError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut lethe = shared.lethe.write().unwrap_or_else(|p| p.into_inner());
            f(&mut lethe)
        })
        .await
        .map_err(ApiError::panicked)?
    }

    /// The REST API under `/v1` and MCP's streamable HTTP at `/mcp`, with the options' token
    /// check and body limit.
    pub fn router(&self, options: &ServeOptions) -> axum::Router {
        api::router(self.clone(), options)
    }

    /// Serves on `listener` until `shutdown` resolves (then in-flight requests finish), running
    /// maintenance in the background when the options ask for it, and flushes the store.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        options: ServeOptions,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        options.check()?;
        let router = self.router(&options);
        let maintenance = options.maintain_every.map(|every| {
            let service = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await; // the first tick is immediate
                loop {
                    tick.tick().await;
                    let done = service.exclusive(|lethe| Ok(lethe.maintain(now())?)).await;
                    if let Err(e) = done {
                        eprintln!("memctl serve: background maintenance failed: {e}");
                    }
                }
            })
        });
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Some(task) = maintenance {
            task.abort();
        }
        served.map_err(|source| ServeError::Io {
            what: "serving HTTP".into(),
            source,
        })?;
        self.flush().await
    }

    /// Runs the MCP server over this process's stdin and stdout until the client closes stdin,
    /// then flushes the store. Nothing else may write to stdout meanwhile.
    pub async fn mcp_stdio(self) -> Result<(), ServeError> {
        mcp::serve_stdio(self.clone()).await?;
        self.flush().await
    }

    /// Flushes the store to disk.
    pub async fn flush(&self) -> Result<(), ServeError> {
        self.shared(|lethe| Ok(lethe.flush()?))
            .await
            .map_err(|e| ServeError::Memory(format!("flushing the store: {e}")))
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT): the signal for a clean shutdown.
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

//! `memctl serve` (REST and MCP over HTTP) and `memctl mcp` (MCP over stdio).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use lethe_serve::{ServeOptions, Service};

use super::common::{open, ModelArgs, StoreArgs};

/// `memctl serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Endpoints (JSON; see GET /v1/openapi.json and the README for curl examples):
  GET  /v1/health                      GET  /v1/stats
  POST /v1/scopes/{scope}/turns        GET  /v1/scopes/{scope}/context?budget=N
  GET  /v1/scopes/{scope}/pages        POST /v1/recall
  GET  /v1/pages/{id}                  GET  /v1/pages/{id}/image[?mode=tiny]
  GET  /v1/pages/{id}/history          PUT  /v1/pages/{id}/pin
  POST /v1/maintain                    POST /mcp (MCP, streamable HTTP)

Binds 127.0.0.1 by default. Another address needs --token-file; every request must then send
`Authorization: Bearer <token>`. SIGTERM or Ctrl-C stops it cleanly (in-flight requests finish,
the store is flushed). Appends are on disk before they are acknowledged.")]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where to listen (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = lethe_serve::DEFAULT_ADDR, value_name = "IP:PORT")]
    pub addr: SocketAddr,
    /// A file holding the bearer token clients must send (required off loopback).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The largest request body in bytes (413 above it).
    #[arg(long, default_value_t = lethe_serve::DEFAULT_BODY_LIMIT, value_name = "BYTES")]
    pub max_body: usize,
    /// Run maintenance (page-out and decay) every this many seconds; 0 only on POST /v1/maintain.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub maintain_every: u64,
    /// Print the listening address as a JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `memctl mcp`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Speaks MCP (JSON-RPC) on stdin/stdout for clients that start their servers as processes, e.g. in
a client's configuration: {\"command\": \"memctl\", \"args\": [\"mcp\", \"--store\", \"DIR\"]}.
Tools: remember, context (old pages come back as images), recall, stats, pin. Logs go to stderr.")]
pub struct McpArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

/// Runs `memctl serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let options = ServeOptions {
        addr: args.addr,
        token: args.token_file.as_ref().map(read_token).transpose()?,
        body_limit: args.max_body,
        maintain_every: (args.maintain_every > 0).then(|| Duration::from_secs(args.maintain_every)),
    };
    options.check()?;
    let lethe = open(&args.store, &args.model)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .with_context(|| format!("binding {}", options.addr))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        if args.json {
            println!("{}", serde_json::json!({"listening": addr.to_string()}));
        }
        eprintln!(
            "memctl serve: listening on http://{addr} (store {}, REST at /v1, MCP at /mcp)",
            args.store.store.display()
        );
        Service::new(lethe)
            .run(listener, options, lethe_serve::shutdown_signal())
            .await?;
        eprintln!("memctl serve: stopped; store flushed");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `memctl mcp`.
pub fn mcp(args: McpArgs) -> anyhow::Result<ExitCode> {
    let lethe = open(&args.store, &args.model)?;
    runtime()?.block_on(Service::new(lethe).mcp_stdio())?;
    Ok(ExitCode::SUCCESS)
}

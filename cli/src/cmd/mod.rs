//! One module per `memctl` subcommand. Each exposes `Args` (clap) and
//! `run(args) -> anyhow::Result<ExitCode>`.

pub mod bench;
pub mod common;
pub mod compress;
pub mod context;
pub mod encode;
pub mod model;
pub mod ocr;
pub mod render;
pub mod serve;
pub mod store;

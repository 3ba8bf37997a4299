//! `lethe-cli`: `memctl`, Lethe's command-line front end (the binary in `src/main.rs`, one module
//! per subcommand under `src/cmd/`), and [`metrics`], the recall scores and benchmark report that
//! `memctl bench` and `memctl compress` print.
//!
//! The library an agent embeds is the `lethe` crate; this crate adds what a terminal needs
//! (argument parsing, progress bars, plots) without making the library depend on it.
//!
//! ```
//! use lethe_cli::metrics::word_precision;
//!
//! assert_eq!(word_precision("the ledger service", "the ledger service"), 1.0);
//! ```

pub mod metrics;

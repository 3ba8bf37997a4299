//! Tests that reach the store's private parts: its key layout and its engine (damaged records,
//! stores written by older schemas, a failing engine).

#[path = "../../../tests/support/fs_tree.rs"]
mod fs_tree;
#[path = "../../../tests/support/fuzz_runner.rs"]
mod fuzz_runner;

mod bad_input;
mod fuzz;
mod migrate;

//! `memctl`: the command-line front end of Lethe.
fn main() {}

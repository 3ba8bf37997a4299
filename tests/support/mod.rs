//! Test servers shared by the facade's tests and `memctl`'s.

pub mod vllm;

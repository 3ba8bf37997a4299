//! The resolution modes, from `lethe-mode` (the one vocabulary of resolutions the crates share).

pub use lethe_mode::*;

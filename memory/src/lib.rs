//! `lethe-memory`: the tiered page store (sled), with an audit log of every tier change.

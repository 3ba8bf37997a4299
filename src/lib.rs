//! Lethe: optical context-compression memory for LLM agents.

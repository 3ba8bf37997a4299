//! `lethe-render`: transcripts to page images.
//!
//! Parses transcripts into turns, paginates turns into pages whose text is fixed, shapes text with
//! cosmic-text over fonts shipped in this crate, and rasterises a page at any resolution mode's pixel
//! size with tiny-skia.

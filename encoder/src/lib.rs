//! `lethe-encoder`: DeepSeek-OCR's DeepEncoder (SAM-base -> 16x conv -> CLIP-L -> projector) in candle.

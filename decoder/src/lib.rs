//! `lethe-decoder`: the DeepSeek-V2-style MoE decoder of DeepSeek-OCR in candle, with generation and
//! the tokenizer.

//! The shipped DeepSeek-OCR tokenizer against `tokenizer/cases.json` (ids and round trip).

mod common;

use lethe_decoder::Tokenizer;

fn check_cases(tok: &Tokenizer) {
    let text = std::fs::read_to_string(common::fixtures().join("tokenizer/cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 30);
    for case in cases {
        let s = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(s).unwrap();
        assert_eq!(got, want, "ids of {s:?}");
        let decoded = tok.decode(&got, false).unwrap();
        assert_eq!(
            decoded,
            case["decoded"].as_str().unwrap(),
            "round trip of {s:?}"
        );
        assert_eq!(tok.count(s).unwrap(), want.len());
    }
}

#[test]
fn embedded_tokenizer_matches_every_case() {
    let tok = Tokenizer::deepseek_ocr().unwrap();
    assert_eq!(tok.name(), "deepseek-ocr");
    check_cases(&tok);
    assert_eq!(tok.token_id("<image>"), Some(128_815));
    assert_eq!(tok.token_id("<td>"), Some(128_821));
    assert_eq!(tok.token_id("</td>"), Some(128_822));
}

#[test]
fn fixture_tokenizer_file_matches_every_case() {
    let tok = Tokenizer::from_dir(common::fixtures().join("tokenizer")).unwrap();
    check_cases(&tok);
}

#[test]
fn missing_tokenizer_file_is_a_clear_error() {
    let err = Tokenizer::from_dir("/nonexistent/model").unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/model/tokenizer.json"),
        "{err}"
    );
}

#[test]
fn streaming_decode_reassembles_the_text() {
    let tok = Tokenizer::deepseek_ocr().unwrap();
    for s in ["Hello, world!", "当前的LLMs在处理长文本时", "emoji 👩‍💻 ok"] {
        let ids = tok.encode(s).unwrap();
        let mut stream = tok.stream(false);
        let mut out = String::new();
        for id in ids {
            if let Some(piece) = stream.push(id).unwrap() {
                out.push_str(&piece);
            }
        }
        if let Some(rest) = stream.finish().unwrap() {
            out.push_str(&rest);
        }
        assert_eq!(out, s);
    }
}

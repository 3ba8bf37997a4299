//! Metrics, summaries and report renderings on hand-made cases with known answers.

mod support;
use lethe_cli::metrics::{
    char_f1, critical_spans, levenshtein, normalized_edit_distance, percentile, score_page,
    span_found, span_recall, word_precision, words, BenchReport, Bucket, CriticalSpan, Keep, Plot,
    SeriesKind, SourcePage, SpanKind, Summary, TextTokenizer, WhitespaceTokenizer,
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

// ---- words and word precision ----

#[test]
fn words_split_on_punctuation_and_keep_case() {
    assert_eq!(words("Hello, world! hello"), ["Hello", "world", "hello"]);
    assert_eq!(words(""), Vec::<&str>::new());
    assert_eq!(words("  ...  "), Vec::<&str>::new());
    assert_eq!(
        words("snake_case x86_64 café"),
        ["snake_case", "x86_64", "café"]
    );
}

#[test]
fn words_count_each_cjk_character() {
    assert_eq!(
        words("我爱北京 Tokyo東京"),
        ["我", "爱", "北", "京", "Tokyo", "東", "京"]
    );
    assert_eq!(words("안녕 하세요"), ["안", "녕", "하", "세", "요"]);
    assert_eq!(words("カタカナ"), ["カ", "タ", "カ", "ナ"]);
}

#[test]
fn word_precision_known_answers() {
    let src = "the cat sat on the mat";
    assert_eq!(word_precision(src, src), 1.0); // identical
    assert_eq!(word_precision(src, ""), 0.0); // empty output
    assert_eq!(word_precision("", "anything"), 1.0); // nothing to recall
    assert_eq!(word_precision("", ""), 1.0);
    assert_eq!(word_precision(src, "mat the on sat cat"), 1.0); // reordered
    assert!(close(word_precision(src, "the cat"), 2.0 / 5.0)); // partial, unique words
    assert!(close(word_precision(src, "the the the"), 1.0 / 5.0)); // repeats do not inflate
    assert!(close(word_precision(src, "the cat and a dog"), 2.0 / 5.0)); // extra words are free
    assert_eq!(word_precision("Rust", "rust"), 0.0); // case-sensitive
}

#[test]
fn word_precision_cjk() {
    assert!(close(word_precision("北京欢迎你", "北京欢"), 3.0 / 5.0));
    assert!(close(
        word_precision("北京 Beijing", "Beijing 京"),
        2.0 / 3.0
    ));
}

#[test]
fn word_precision_code() {
    let src = "let total_count = items.len();";
    // words: let, total_count, items, len
    assert!(close(
        word_precision(src, "let total = items.len();"),
        3.0 / 4.0
    ));
}

// ---- edit distance ----

#[test]
fn levenshtein_known_answers() {
    assert_eq!(levenshtein("kitten", "sitting"), 3);
    assert_eq!(levenshtein("", "abc"), 3);
    assert_eq!(levenshtein("abc", ""), 3);
    assert_eq!(levenshtein("ab cd", "cd ab"), 4);
    assert_eq!(levenshtein("北京欢迎你", "北京欢迎您"), 1); // chars, not bytes
}

#[test]
fn normalized_edit_distance_known_answers() {
    assert_eq!(normalized_edit_distance("same text", "same text"), 0.0);
    assert_eq!(normalized_edit_distance("", ""), 0.0);
    assert_eq!(normalized_edit_distance("abc", ""), 1.0);
    assert_eq!(normalized_edit_distance("", "abc"), 1.0);
    assert!(close(
        normalized_edit_distance("kitten", "sitting"),
        3.0 / 7.0
    ));
    assert!(close(normalized_edit_distance("ab cd", "cd ab"), 4.0 / 5.0)); // reordered
    assert!(close(
        normalized_edit_distance("北京欢迎你", "北京欢迎您"),
        1.0 / 5.0
    ));
    // Whitespace layout is not an error.
    assert_eq!(normalized_edit_distance("a  b\n  c ", "a b c"), 0.0);
    // Code: one char changed in 12.
    assert!(close(
        normalized_edit_distance("x = f(a, b);", "x = f(a, c);"),
        1.0 / 12.0
    ));
}

// ---- character F1 ----

#[test]
fn char_f1_known_answers() {
    assert_eq!(char_f1("abc", "abc"), 1.0);
    assert_eq!(char_f1("abc", "cba"), 1.0); // reordered: bag of chars
    assert_eq!(char_f1("", ""), 1.0);
    assert_eq!(char_f1("abc", ""), 0.0);
    assert_eq!(char_f1("", "abc"), 0.0);
    assert_eq!(char_f1("abc", "xyz"), 0.0);
    assert!(close(char_f1("abcd", "ab"), 2.0 / 3.0)); // P 1, R 1/2
    assert!(close(char_f1("aab", "ab"), 0.8)); // overlap 2: P 1, R 2/3
    assert_eq!(char_f1("a b\tc", "abc"), 1.0); // whitespace ignored
    assert!(close(char_f1("北京欢迎你", "北京"), 2.0 * 1.0 * 0.4 / 1.4));
    assert!(close(char_f1("f(x);", "f(x)"), 2.0 * 1.0 * 0.8 / 1.8)); // code punctuation counts
}

// ---- critical spans ----

fn kinds(text: &str) -> Vec<(SpanKind, String)> {
    critical_spans(text)
        .into_iter()
        .map(|s| (s.kind, s.text))
        .collect()
}

#[test]
fn spans_of_each_kind() {
    let text = "See https://example.com/a?b=1 (or www.example.org), run 550e8400-e29b-41d4-a716-446655440000 \
                at commit 9fceb02, fix PROJ-42 and #17 in /var/log/app.log, src/cmd/bench.rs and ~/notes; \
                call parse_args() on HashMap, getValue, std::fs, self.field, --max-tokens, H100 \
                by 2025-10-20 12:30 for 1,000.50 units.";
    let got = kinds(text);
    let want: Vec<(SpanKind, &str)> = vec![
        (SpanKind::Url, "https://example.com/a?b=1"),
        (SpanKind::Url, "www.example.org"),
        (SpanKind::Uuid, "550e8400-e29b-41d4-a716-446655440000"),
        (SpanKind::Hash, "9fceb02"),
        (SpanKind::Ticket, "PROJ-42"),
        (SpanKind::Ticket, "#17"),
        (SpanKind::Path, "/var/log/app.log"),
        (SpanKind::Path, "src/cmd/bench.rs"),
        (SpanKind::Path, "~/notes"),
        (SpanKind::Identifier, "parse_args()"),
        (SpanKind::Identifier, "HashMap"),
        (SpanKind::Identifier, "getValue"),
        (SpanKind::Identifier, "std::fs"),
        (SpanKind::Identifier, "self.field"),
        (SpanKind::Identifier, "--max-tokens"),
        (SpanKind::Identifier, "H100"),
        (SpanKind::Number, "2025-10-20"),
        (SpanKind::Number, "12:30"),
        (SpanKind::Number, "1,000.50"),
    ];
    let want: Vec<(SpanKind, String)> = want.into_iter().map(|(k, s)| (k, s.to_owned())).collect();
    assert_eq!(got, want);
}

#[test]
fn plain_prose_has_no_spans() {
    assert!(critical_spans("The quick brown fox, e.g. a dog, and/or a cat.").is_empty());
    assert_eq!(span_recall("hello world", "hello world").recall(), None);
}

#[test]
fn spans_are_unique() {
    assert_eq!(
        kinds("42 and 42 and 42"),
        [(SpanKind::Number, "42".to_owned())]
    );
}

#[test]
fn code_lines_in_fences_and_outside() {
    let text =
        "Try this:\n```\nfn main() {\n    let x = 1;\n}\n```\nThen run\n$ cargo   test -p lethe\n";
    assert_eq!(
        kinds(text),
        vec![
            (SpanKind::CodeLine, "fn main() {".to_owned()),
            (SpanKind::Identifier, "main()".to_owned()),
            (SpanKind::CodeLine, "let x = 1;".to_owned()),
            (SpanKind::Number, "1".to_owned()),
            (SpanKind::CodeLine, "$ cargo test -p lethe".to_owned()),
        ]
    );
    // A code line is found in re-wrapped whitespace but not when one char differs.
    let line = CriticalSpan {
        kind: SpanKind::CodeLine,
        text: "let x = 1;".to_owned(),
    };
    assert!(span_found(&line, "fn main() {\n  let   x = 1;\n}"));
    assert!(!span_found(&line, "let x = 7;"));
}

#[test]
fn span_recall_known_answers() {
    let src = "Ticket PROJ-42: see /var/log/app.log and commit 9fceb02";
    let r = span_recall(src, src);
    assert_eq!((r.found, r.total), (3, 3));
    let r = span_recall(
        src,
        "Ticket PROJ-42: see /var/log/app.txt and commit 9fceb02",
    );
    assert_eq!((r.found, r.total), (2, 3));
    assert!(close(r.recall().unwrap(), 2.0 / 3.0));
    let r = span_recall(src, "");
    assert_eq!((r.found, r.total), (0, 3));
    // Reordered output still contains every span.
    let r = span_recall(src, "9fceb02 /var/log/app.log PROJ-42");
    assert_eq!(r.recall(), Some(1.0));
}

#[test]
fn span_match_respects_word_boundaries() {
    assert_eq!(span_recall("port 8080", "port 80800").found, 0);
    assert_eq!(span_recall("port 8080", "port 18080").found, 0);
    assert_eq!(span_recall("port 8080", "(port 8080).").found, 1);
    assert_eq!(span_recall("user_id", "user_ids").found, 0);
}

// ---- summaries and buckets ----

#[test]
fn percentile_is_linear_between_closest_ranks() {
    let v: Vec<f64> = (1..=10).map(f64::from).collect();
    assert!(close(percentile(&v, 0.10).unwrap(), 1.9)); // h = 0.9
    assert!(close(percentile(&v, 0.90).unwrap(), 9.1)); // h = 8.1
    assert!(close(percentile(&v, 0.5).unwrap(), 5.5));
    assert_eq!(percentile(&v, 0.0), Some(1.0));
    assert_eq!(percentile(&v, 1.0), Some(10.0));
    let shuffled = [7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0];
    assert_eq!(percentile(&shuffled, 0.10), percentile(&v, 0.10));
    assert_eq!(percentile(&[0.25], 0.10), Some(0.25));
    assert_eq!(percentile(&[], 0.10), None);
    // Two values: h = 0.1 -> 0 + 0.1 * (1 - 0)
    assert!(close(percentile(&[1.0, 0.0], 0.10).unwrap(), 0.1));
}

#[test]
fn summary_of_values() {
    let s = Summary::of(&[1.0, 0.5, 0.0, 0.5]);
    assert_eq!(s.n, 4);
    assert_eq!(s.mean, Some(0.5));
    // sorted 0, .5, .5, 1: p10 h = 0.3 -> 0.15; p90 h = 2.7 -> 0.5 + 0.7 * 0.5 = 0.85
    assert!(close(s.p10.unwrap(), 0.15));
    assert!(close(s.p90.unwrap(), 0.85));
    let empty = Summary::of(&[]);
    assert_eq!((empty.n, empty.mean, empty.p10), (0, None, None));
}

#[test]
fn bucket_arithmetic() {
    assert_eq!(Bucket::of(0, 100), Bucket { lo: 0, hi: 100 });
    assert_eq!(Bucket::of(99, 100), Bucket { lo: 0, hi: 100 });
    assert_eq!(Bucket::of(100, 100), Bucket { lo: 100, hi: 200 });
    assert_eq!(Bucket::of(650, 100), Bucket { lo: 600, hi: 700 });
    assert_eq!(Bucket::of(1299, 100).to_string(), "1200-1300");
    assert_eq!(Bucket::of(7, 5), Bucket { lo: 5, hi: 10 });
    assert_eq!(Bucket::of(7, 0), Bucket { lo: 7, hi: 8 });
}

// ---- report ----

/// `n` distinct whitespace tokens.
fn text_of(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Two modes, three pages of 150, 180 and 250 tokens; the "decoder" returns the first half of
/// the page at tiny and the whole page at base.
fn sample_report() -> BenchReport {
    let tok = WhitespaceTokenizer;
    let mut b = BenchReport::builder()
        .tokenizer(tok.name())
        .reader("test-reader");
    for (i, n) in [150usize, 180, 250].into_iter().enumerate() {
        let page = SourcePage::new("doc", i, text_of(n), &tok).unwrap();
        assert_eq!(page.text_tokens, n);
        let half = text_of(n / 2);
        b = b
            .record(page.optical("tiny", 73, 64, &half))
            .record(page.truncation("tiny", 73, Keep::First, &tok).unwrap())
            .record(page.optical("base", 273, 256, &page.text))
            .record(page.truncation("base", 273, Keep::First, &tok).unwrap())
            .record(page.uncompressed());
    }
    b.build().unwrap()
}

#[test]
fn report_series_ratios_and_buckets() {
    let r = sample_report();
    let names: Vec<&str> = r.series.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "tiny",
            "truncation@tiny",
            "base",
            "truncation@base",
            "uncompressed"
        ]
    );
    let tiny = &r.series[0];
    assert_eq!(tiny.kind, SeriesKind::Optical);
    assert_eq!(tiny.all.pages, 3);
    assert_eq!(tiny.all.text_tokens, 580);
    assert_eq!(tiny.all.positions, 219);
    assert_eq!(tiny.all.nominal_tokens, 192);
    assert!(close(tiny.all.ratio_per_position.unwrap(), 580.0 / 219.0));
    assert!(close(tiny.all.ratio_per_nominal.unwrap(), 580.0 / 192.0));
    assert!(close(tiny.all.word_precision.mean.unwrap(), 0.5));
    // Buckets 100-200 (150, 180) and 200-300 (250).
    let b: Vec<(String, usize)> = tiny
        .buckets
        .iter()
        .map(|b| (b.bucket.to_string(), b.aggregate.pages))
        .collect();
    assert_eq!(b, [("100-200".to_owned(), 2), ("200-300".to_owned(), 1)]);
    assert!(close(
        tiny.buckets[0].aggregate.ratio_per_position.unwrap(),
        330.0 / 146.0
    ));

    // Truncation at tiny keeps the first 73 tokens of each page: 73/150, 73/180, 73/250 of the words.
    let trunc = &r.series[1];
    let want = (73.0 / 150.0 + 73.0 / 180.0 + 73.0 / 250.0) / 3.0;
    assert!(close(trunc.all.word_precision.mean.unwrap(), want));
    assert!(close(trunc.all.ratio_per_position.unwrap(), 580.0 / 219.0));
    // At base every page fits the budget: nothing is cut.
    assert_eq!(r.series[3].all.word_precision.mean, Some(1.0));
    assert_eq!(r.series[3].all.edit_distance.mean, Some(0.0));

    let un = &r.series[4];
    assert_eq!(un.kind, SeriesKind::Uncompressed);
    assert_eq!(un.all.ratio_per_position, Some(1.0));
    assert_eq!(un.all.word_precision.mean, Some(1.0));
    assert_eq!(un.all.char_f1.p10, Some(1.0));
    assert_eq!(r.pages.len(), 15);
}

#[test]
fn truncation_with_whitespace_tokenizer() {
    let tok = WhitespaceTokenizer;
    let cut = |text, n, keep| tok.truncate(text, n, keep).unwrap();
    assert_eq!(cut("a  b\nc d", 3, Keep::First), "a  b\nc");
    assert_eq!(cut(" a  b\nc d ", 3, Keep::Last), "b\nc d ");
    assert_eq!(cut("a b", 5, Keep::First), "a b");
    assert_eq!(cut("a b", 2, Keep::Last), "a b");
    assert_eq!(cut("a b", 0, Keep::First), "");
    assert_eq!(cut("a b", 0, Keep::Last), "");
    assert_eq!(cut("  ", 0, Keep::Last), "  ");
    let page = SourcePage::new("d", 0, "a b c d e f", &tok).unwrap();
    for keep in [Keep::First, Keep::Last] {
        let rec = page.truncation("tiny", 3, keep, &tok).unwrap();
        assert_eq!(rec.scores.word_precision, 0.5);
        assert_eq!((rec.positions, rec.nominal_tokens), (3, 3));
    }
    // Repeats at the head: the first three chunks hold one unique word, the last three all three.
    let page = SourcePage::new("d", 0, "a a a a b c", &tok).unwrap();
    let first = page.truncation("tiny", 3, Keep::First, &tok).unwrap();
    let last = page.truncation("tiny", 3, Keep::Last, &tok).unwrap();
    assert!((first.scores.word_precision - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(last.scores.word_precision, 1.0);
}

#[test]
fn zero_bucket_width_is_an_error() {
    assert!(BenchReport::builder().bucket_width(0).build().is_err());
}

#[test]
fn table_lists_every_series_and_bucket() {
    let t = sample_report().to_table();
    assert!(t.contains("`whitespace`") && t.contains("`test-reader`"));
    for name in [
        "tiny",
        "truncation@tiny",
        "base",
        "truncation@base",
        "uncompressed",
    ] {
        assert!(
            t.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{t}"
        );
    }
    assert!(t.contains("100-200") && t.contains("200-300"));
    assert!(t.contains("2.65x")); // 580 / 219
}

#[test]
fn csv_shape() {
    let r = sample_report();
    let csv = r.to_csv();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], BenchReport::CSV_HEADER);
    let cols = lines[0].split(',').count();
    assert_eq!(cols, 19);
    // Per series: an `all` row and one row per bucket (2 buckets each).
    assert_eq!(lines.len(), 1 + 5 * 3);
    for l in &lines[1..] {
        assert_eq!(l.split(',').count(), cols, "{l}");
    }
    assert!(lines[1].starts_with("tiny,optical,tiny,all,3,580,219,192,"));
    assert!(lines[2].starts_with("tiny,optical,tiny,100-200,2,330,146,128,"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("uncompressed,uncompressed,,all,3,580,580,580,1,1,1,1,0,0,1,1,")));
}

#[test]
fn json_shape() {
    let r = sample_report();
    let v: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
    assert_eq!(v["tokenizer"], "whitespace");
    assert_eq!(v["reader"], "test-reader");
    assert_eq!(v["bucket_width"], 100);
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 5);
    assert_eq!(series[0]["name"], "tiny");
    assert_eq!(series[0]["kind"], "optical");
    assert_eq!(series[0]["all"]["pages"], 3);
    assert_eq!(series[0]["all"]["word_precision"]["mean"], 0.5);
    assert_eq!(series[0]["buckets"][0]["bucket"]["lo"], 100);
    assert_eq!(series[0]["buckets"][0]["pages"], 2);
    assert_eq!(series[4]["mode"], serde_json::Value::Null);
    assert_eq!(v["pages"].as_array().unwrap().len(), 15);
    // Page 0 at tiny: its 150 words `w0`..`w149` are identifiers (letters and digits); the
    // decoder gave back the first 75.
    assert_eq!(v["pages"][0]["mode"], "tiny");
    assert_eq!(v["pages"][0]["scores"]["spans"]["total"], 150);
    assert_eq!(v["pages"][0]["scores"]["spans"]["found"], 75);
}

#[test]
fn score_page_on_identical_text_is_perfect() {
    let text = "Call foo_bar() at 10:45 with id 550e8400-e29b-41d4-a716-446655440000.";
    let s = score_page(text, text);
    assert_eq!(
        (s.word_precision, s.edit_distance, s.char_f1),
        (1.0, 0.0, 1.0)
    );
    assert_eq!(s.spans.recall(), Some(1.0));
}

// ---- plot ----

#[test]
fn svg_has_one_series_per_mode_and_baseline() {
    let plot = Plot::from_report(&sample_report());
    let names: Vec<&str> = plot.series.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["tiny", "base", "truncation", "uncompressed"]);
    // truncation: 2 modes x 2 buckets; uncompressed at ratio 1.
    assert_eq!(plot.series[2].points.len(), 4);
    assert_eq!(plot.series[3].points, [(1.0, 1.0), (1.0, 1.0)]);
    let svg = plot.to_svg();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<g class=\"series\"").count(), 4);
    for n in names {
        assert!(svg.contains(&format!("data-series=\"{n}\"")), "{n}");
    }
    assert_eq!(svg.matches("<g").count(), svg.matches("</g>").count());
}

#[test]
fn png_decodes_with_the_right_size_and_colours() {
    let plot = Plot::from_report(&sample_report());
    let bytes = plot.to_png().unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (Plot::WIDTH, Plot::HEIGHT));
    assert_eq!(info.color_type, png::ColorType::Rgba);
    let px: Vec<&[u8]> = buf[..info.buffer_size()].chunks(4).collect();
    // The corner is white background; the first mode's colour (#1f77b4) and black text are drawn.
    assert_eq!(px[0], [255, 255, 255, 255]);
    assert!(px.iter().any(|p| p[..3] == [0x1f, 0x77, 0xb4]));
    assert!(px.iter().filter(|p| p[..3] == [0, 0, 0]).count() > 500);
}

#[test]
fn levenshtein_with_shared_prefix_and_suffix() {
    assert_eq!(levenshtein("abcXdef", "abcYdef"), 1);
    assert_eq!(levenshtein("abcdef", "abcdef"), 0);
    assert_eq!(levenshtein("aaa", "aaaa"), 1);
    assert_eq!(levenshtein("abab", "ab"), 2);
    assert_eq!(levenshtein("prefix only", "prefix"), 5);
    assert_eq!(levenshtein("same suffix", "suffix"), 5);
}

#[test]
fn every_span_is_found_in_its_own_text() {
    let text = std::fs::read_to_string(support::sample()).unwrap();
    let extra = "v1.2.3 and x4-4 at 07:41:02.118, (see `pool.begin()`), id=42; HTTP/1.1 \"503s\"";
    for t in [text.as_str(), extra] {
        let spans = critical_spans(t);
        assert!(!spans.is_empty());
        for s in &spans {
            assert!(span_found(s, t), "{s:?} not found in its own text");
        }
        assert_eq!(span_recall(t, t).recall(), Some(1.0));
    }
    // A number inside a version string is bounded by digits only.
    let r = span_recall("release v1.2.3", "release v1.2.3");
    assert_eq!((r.found, r.total), (1, 1));
    assert_eq!(span_recall("release v1.2.3", "release v1.2.34").found, 0);
}

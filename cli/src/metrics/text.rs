//! Text-level recall metrics: word precision, normalised edit distance and character F1.

use std::collections::{HashMap, HashSet};

/// Whether `c` is written without spaces between words (CJK ideographs, kana, hangul syllables,
/// and their compatibility and extension blocks); each such character counts as one word.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF     // hiragana, katakana
        | 0x31F0..=0x31FF   // katakana phonetic extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xAC00..=0xD7AF   // hangul syllables
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0xFF66..=0xFF9F   // half-width katakana
        | 0x20000..=0x2FFFF // CJK extensions B..F and compatibility supplement
        | 0x30000..=0x3134F // CJK extension G
    )
}

/// Splits `text` into words, in order, with repeats.
///
/// A word is either a maximal run of alphanumeric characters (`char::is_alphanumeric`, so letters and
/// digits of every script) and `_`, excluding CJK characters; or a single CJK character
/// ([`is_cjk`]), since CJK text has no spaces between words. Everything else (whitespace, punctuation,
/// symbols, emoji) separates words and is dropped. Case is kept: `Rust` and `rust` are different words.
///
/// ```
/// use lethe_cli::metrics::words;
/// assert_eq!(words("Free OCR: 中文 snake_case, v1.2"), ["Free", "OCR", "中", "文", "snake_case", "v1", "2"]);
/// ```
pub fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if is_cjk(c) {
            if let Some(s) = start.take() {
                out.push(&text[s..i]);
            }
            out.push(&text[i..i + c.len_utf8()]);
        } else if c.is_alphanumeric() || c == '_' {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            out.push(&text[s..i]);
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// Fox-style word precision, as in the DeepSeek-OCR paper's Fox table: the share of the source's
/// unique words ([`words`]) that also occur anywhere in the output.
///
/// `|set(words(source)) ∩ set(words(output))| / |set(words(source))|`, in `[0, 1]`. Order and repeats
/// do not matter. A source with no words has nothing to recall: the result is `1.0`.
///
/// ```
/// use lethe_cli::metrics::word_precision;
/// assert_eq!(word_precision("the cat sat", "the cat"), 2.0 / 3.0);
/// ```
pub fn word_precision(source: &str, output: &str) -> f64 {
    let source: HashSet<&str> = words(source).into_iter().collect();
    if source.is_empty() {
        return 1.0;
    }
    let output: HashSet<&str> = words(output).into_iter().collect();
    let found = source.iter().filter(|w| output.contains(*w)).count();
    found as f64 / source.len() as f64
}

/// Collapses every run of whitespace to one ASCII space and trims both ends, so that line breaks and
/// indentation chosen by a decoder do not count as errors.
pub fn normalize_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Levenshtein distance between `a` and `b` over Unicode scalar values (chars): the least number of
/// single-char insertions, deletions and substitutions turning `a` into `b`.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // A shared prefix and suffix never need an edit: drop them (exact, and fast on near-copies).
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[..a.len() - suffix], &b[..b.len() - suffix]);
    if a.is_empty() {
        return b.len();
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0usize; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Normalised edit distance: [`levenshtein`] over chars of the whitespace-normalised texts
/// ([`normalize_whitespace`]) divided by the longer one's length in chars, in `[0, 1]`, lower is
/// better. Two empty texts are identical: `0.0`; one empty and one not: `1.0`.
///
/// ```
/// use lethe_cli::metrics::normalized_edit_distance;
/// assert_eq!(normalized_edit_distance("kitten", "sitting"), 3.0 / 7.0);
/// ```
pub fn normalized_edit_distance(source: &str, output: &str) -> f64 {
    let a = normalize_whitespace(source);
    let b = normalize_whitespace(output);
    let longest = a.chars().count().max(b.chars().count());
    if longest == 0 {
        return 0.0;
    }
    levenshtein(&a, &b) as f64 / longest as f64
}

/// Character F1: the harmonic mean of bag-of-characters precision and recall, ignoring whitespace.
///
/// With `S` and `O` the multisets of non-whitespace chars of source and output, and
/// `overlap = Σ_c min(S(c), O(c))`: precision `= overlap / |O|`, recall `= overlap / |S|`,
/// F1 `= 2PR / (P + R)` (`0.0` when `P + R = 0`). Both empty: `1.0`; exactly one empty: `0.0`.
/// Order is ignored, so a reordered text scores `1.0` here (edit distance catches order).
///
/// ```
/// use lethe_cli::metrics::char_f1;
/// assert_eq!(char_f1("abcd", "ab"), 2.0 * 1.0 * 0.5 / 1.5);
/// ```
pub fn char_f1(source: &str, output: &str) -> f64 {
    let bag = |t: &str| {
        let mut m: HashMap<char, usize> = HashMap::new();
        for c in t.chars().filter(|c| !c.is_whitespace()) {
            *m.entry(c).or_default() += 1;
        }
        m
    };
    let s = bag(source);
    let o = bag(output);
    let s_len: usize = s.values().sum();
    let o_len: usize = o.values().sum();
    match (s_len, o_len) {
        (0, 0) => return 1.0,
        (0, _) | (_, 0) => return 0.0,
        _ => {}
    }
    let overlap: usize = s
        .iter()
        .map(|(c, n)| (*n).min(o.get(c).copied().unwrap_or(0)))
        .sum();
    let p = overlap as f64 / o_len as f64;
    let r = overlap as f64 / s_len as f64;
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

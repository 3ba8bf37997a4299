//! Critical spans: the parts of a page that must come back exactly (numbers, identifiers, URLs,
//! paths, code lines), and their exact recall in a decoded text.

use std::collections::HashSet;

use serde::Serialize;

use super::text::normalize_whitespace;

/// What a [`CriticalSpan`] is. Kinds only label spans for reports; recall counts them all alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SpanKind {
    /// A URL: `scheme://...` or `www....`.
    Url,
    /// A UUID: 8-4-4-4-12 hexadecimal digits.
    Uuid,
    /// A hexadecimal hash of 7 or more digits with at least one letter and one digit (git, sha).
    Hash,
    /// A ticket id: `ABC-123` (an upper-case key, a hyphen, digits) or `#123`.
    Ticket,
    /// A file system path: contains `/` or `\` and either starts with `/`, `~/`, `./`, `../` or a
    /// drive (`C:\`), or has a segment with a `.` or `_` (`src/main.rs`), or has 3 or more segments.
    Path,
    /// An identifier: `snake_case` or `SCREAMING_CASE`, `camelCase` or `CamelCase` (a lower-case
    /// letter followed by an upper-case one), `a::b`, `call()`, `self.field` (dotted, every part
    /// starting with a letter and at least 2 chars long), `--flag`, or letters mixed with digits
    /// (`H100`, `utf8`).
    Identifier,
    /// A number: digits, with `.`, `,`, `:`, `/` or `-` between digit runs (`3.14`, `1,000`,
    /// `12:30`, `2025-10-20`).
    Number,
    /// A line of code, whitespace-normalised: every non-blank line inside a ``` fence, or a line
    /// outside fences that ends with `;`, `{` or `}`, or starts with a common code keyword or a shell
    /// prompt (`fn `, `let `, `def `, `import `, `$ `, ...).
    CodeLine,
}

/// One span of the source that should be recalled exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CriticalSpan {
    /// The span's kind.
    pub kind: SpanKind,
    /// The exact text (for code lines, whitespace-normalised).
    pub text: String,
}

const CODE_PREFIXES: &[&str] = &[
    "fn ", "pub ", "let ", "const ", "static ", "use ", "impl ", "struct ", "enum ", "mod ",
    "def ", "class ", "import ", "from ", "return ", "#include", "#define", "if (", "for (",
    "while (", "func ", "var ", "$ ", ">>> ", "SELECT ", "INSERT ", "UPDATE ", "DELETE ",
];

fn is_code_line(trimmed: &str) -> bool {
    trimmed.chars().count() >= 3
        && (trimmed.ends_with(';')
            || trimmed.ends_with('{')
            || trimmed.ends_with('}')
            || CODE_PREFIXES.iter().any(|p| trimmed.starts_with(p)))
}

/// Extracts the critical spans of `text`, unique by text, in order of first appearance (a text found
/// as two kinds keeps the first). Lines are examined for code first, then every whitespace-separated
/// chunk, stripped of surrounding quotes, brackets, backticks and trailing punctuation, is
/// classified in the order URL, UUID, hash, ticket, path, identifier; a chunk that is none of these
/// contributes its numbers. See [`SpanKind`] for each rule.
///
/// ```
/// use lethe_cli::metrics::{critical_spans, SpanKind};
/// let spans = critical_spans("See https://x.io/a and src/main.rs: fix parse_args() by 12:30.");
/// let kinds: Vec<_> = spans.iter().map(|s| (s.kind, s.text.as_str())).collect();
/// assert_eq!(kinds, [
///     (SpanKind::Url, "https://x.io/a"),
///     (SpanKind::Path, "src/main.rs"),
///     (SpanKind::Identifier, "parse_args()"),
///     (SpanKind::Number, "12:30"),
/// ]);
/// ```
pub fn critical_spans(text: &str) -> Vec<CriticalSpan> {
    let mut out: Vec<CriticalSpan> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut push = |kind: SpanKind, s: &str| {
        if seen.insert(s.to_owned()) {
            out.push(CriticalSpan {
                kind,
                text: s.to_owned(),
            });
        }
    };
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if (in_fence && trimmed.chars().count() >= 2) || (!in_fence && is_code_line(trimmed)) {
            push(SpanKind::CodeLine, &normalize_whitespace(trimmed));
        }
        for chunk in line.split_whitespace() {
            let c = strip_chunk(chunk);
            if c.is_empty() {
                continue;
            }
            match classify(c) {
                Some(kind) => push(kind, c),
                None => {
                    for n in numbers(c) {
                        push(SpanKind::Number, n);
                    }
                }
            }
        }
    }
    out
}

/// Strips surrounding quotes, brackets, backticks and trailing punctuation, keeping the `()` of a
/// call (`parse_args()`).
fn strip_chunk(chunk: &str) -> &str {
    let start = chunk.trim_start_matches(['"', '\'', '(', '[', '{', '<', '`', '*']);
    let offset = chunk.len() - start.len();
    let core = start.trim_end_matches([
        '"', '\'', '.', ',', ';', ':', '!', '?', ')', ']', '}', '>', '`', '*',
    ]);
    if core.ends_with('(') && start[core.len()..].starts_with(')') {
        &chunk[offset..offset + core.len() + 1]
    } else {
        core
    }
}

fn classify(c: &str) -> Option<SpanKind> {
    if is_url(c) {
        Some(SpanKind::Url)
    } else if is_uuid(c) {
        Some(SpanKind::Uuid)
    } else if is_hash(c) {
        Some(SpanKind::Hash)
    } else if is_ticket(c) {
        Some(SpanKind::Ticket)
    } else if is_path(c) {
        Some(SpanKind::Path)
    } else if is_identifier(c) {
        Some(SpanKind::Identifier)
    } else {
        None
    }
}

fn is_url(c: &str) -> bool {
    if c.starts_with("www.") && c.len() > 4 {
        return true;
    }
    match c.find("://") {
        Some(i) if i > 0 && c.len() > i + 3 => {
            let scheme = &c[..i];
            scheme.starts_with(|ch: char| ch.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "+.-".contains(ch))
        }
        _ => false,
    }
}

fn is_uuid(c: &str) -> bool {
    c.len() == 36
        && c.char_indices().all(|(i, ch)| {
            if [8, 13, 18, 23].contains(&i) {
                ch == '-'
            } else {
                ch.is_ascii_hexdigit()
            }
        })
}

fn is_hash(c: &str) -> bool {
    c.len() >= 7
        && c.chars().all(|ch| ch.is_ascii_hexdigit())
        && c.chars().any(|ch| ch.is_ascii_digit())
        && c.chars().any(|ch| ch.is_ascii_alphabetic())
}

fn is_ticket(c: &str) -> bool {
    if let Some(d) = c.strip_prefix('#') {
        return !d.is_empty() && d.chars().all(|ch| ch.is_ascii_digit());
    }
    let Some((key, num)) = c.split_once('-') else {
        return false;
    };
    (2..=10).contains(&key.len())
        && key.starts_with(|ch: char| ch.is_ascii_uppercase())
        && key
            .chars()
            .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit())
        && !num.is_empty()
        && num.chars().all(|ch| ch.is_ascii_digit())
}

fn is_path(c: &str) -> bool {
    if !c.contains(['/', '\\']) {
        return false;
    }
    let b = c.as_bytes();
    if c.starts_with('/') && c.len() > 1
        || c.starts_with("~/")
        || c.starts_with("./")
        || c.starts_with("../")
        || (b.len() > 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\')
    {
        return true;
    }
    let segs: Vec<&str> = c.split(['/', '\\']).filter(|s| !s.is_empty()).collect();
    let ok_seg = |s: &&str| {
        s.chars()
            .all(|ch| ch.is_alphanumeric() || "_.-@+~".contains(ch))
    };
    segs.len() >= 2
        && segs.iter().all(ok_seg)
        && segs.iter().any(|s| s.chars().any(char::is_alphabetic))
        && (segs.len() >= 3 || segs.iter().any(|s| s.contains(['.', '_'])))
}

fn is_identifier(c: &str) -> bool {
    if let Some(flag) = c.strip_prefix("--") {
        return flag.len() >= 2
            && flag.starts_with(|ch: char| ch.is_ascii_alphabetic())
            && flag
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
    }
    let (core, call) = match c.strip_suffix("()") {
        Some(core) => (core, true),
        None => (c, false),
    };
    if core.is_empty()
        || !core
            .chars()
            .all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '.' || ch == ':')
        || !core.chars().any(char::is_alphabetic)
    {
        return false;
    }
    let chars: Vec<char> = core.chars().collect();
    let snake = chars
        .windows(3)
        .any(|w| w[0].is_alphanumeric() && w[1] == '_' && w[2].is_alphanumeric());
    let camel = chars
        .windows(2)
        .any(|w| w[0].is_lowercase() && w[1].is_uppercase());
    let path_sep = core.contains("::");
    let dotted = {
        let parts: Vec<&str> = core.split('.').collect();
        parts.len() >= 2
            && parts
                .iter()
                .all(|p| p.chars().count() >= 2 && p.starts_with(|ch: char| ch.is_alphabetic()))
    };
    let alnum_mix = core.chars().all(char::is_alphanumeric)
        && core.chars().count() >= 2
        && core.chars().any(|ch| ch.is_ascii_digit());
    call || snake || camel || path_sep || dotted || alnum_mix
}

/// The numbers inside `c`: maximal runs of ASCII digits joined by single `.`, `,`, `:`, `/` or `-`.
fn numbers(c: &str) -> Vec<&str> {
    let b = c.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        loop {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < b.len() && b".,:/-".contains(&b[i]) && b[i + 1].is_ascii_digit() {
                i += 1;
            } else {
                break;
            }
        }
        out.push(&c[start..i]);
    }
    out
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `span` occurs exactly in `output`. A code line must occur as a substring of the
/// whitespace-normalised output. A number must occur with no digit right before or after it, so
/// `12` is not found in `123` (but is in `v12`). Any other span must occur as a substring whose
/// ends fall on word boundaries (as regex `\b`): if the span starts (ends) with a letter, digit or
/// `_`, the char before (after) the occurrence must not be one. So every span of a text is found
/// in the text itself.
pub fn span_found(span: &CriticalSpan, output: &str) -> bool {
    if span.kind == SpanKind::CodeLine {
        return normalize_whitespace(output).contains(&span.text);
    }
    let needle = span.text.as_str();
    let (Some(first), Some(last)) = (needle.chars().next(), needle.chars().next_back()) else {
        return true;
    };
    // Numbers are maximal digit runs, possibly inside a longer chunk (`v1.2.3`): only digits
    // bound them. Every other span is a whole chunk: letters, digits and `_` bound it.
    let bounds: fn(char) -> bool = if span.kind == SpanKind::Number {
        |c| c.is_ascii_digit()
    } else {
        is_word_char
    };
    output.match_indices(needle).any(|(i, _)| {
        let before_ok =
            !bounds(first) || output[..i].chars().next_back().is_none_or(|c| !bounds(c));
        let after_ok = !bounds(last)
            || output[i + needle.len()..]
                .chars()
                .next()
                .is_none_or(|c| !bounds(c));
        before_ok && after_ok
    })
}

/// How many of a source's critical spans an output recalls exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SpanRecall {
    /// Unique critical spans in the source.
    pub total: usize,
    /// Of those, how many [`span_found`] in the output.
    pub found: usize,
}

impl SpanRecall {
    /// `found / total`, or `None` when the source has no critical spans (such pages are left out of
    /// span-recall summaries rather than counted as perfect).
    pub fn recall(&self) -> Option<f64> {
        (self.total > 0).then(|| self.found as f64 / self.total as f64)
    }
}

/// Exact recall of the source's [`critical_spans`] in `output`.
///
/// ```
/// use lethe_cli::metrics::span_recall;
/// let r = span_recall("ticket ABC-12 at 3.5 GB", "ticket ABC-12 at 3.6 GB");
/// assert_eq!((r.found, r.total), (1, 2));
/// ```
pub fn span_recall(source: &str, output: &str) -> SpanRecall {
    let spans = critical_spans(source);
    SpanRecall {
        total: spans.len(),
        found: spans.iter().filter(|s| span_found(s, output)).count(),
    }
}

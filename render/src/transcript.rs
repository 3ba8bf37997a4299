//! Transcripts: detection, parsing and sanitising of dialogue into [`Turn`]s.
//!
//! Four input formats are understood (see [`Format`]): plain text (one turn per paragraph),
//! `Speaker: text` lines (with `=== Session ... ===` separators and optional `[timestamp]` prefixes),
//! JSON Lines of `{"role", "content"}` messages, and an OpenAI-style messages array (or an object with a
//! `"messages"` array). Message content may be a string or a list of text parts.
//!
//! All text is sanitised the same way: `\r\n` and lone `\r` become `\n`, tabs are expanded to spaces,
//! and other control characters (C0, DEL, C1) are replaced by the visible replacement character
//! U+FFFD `�` (which the bundled fonts draw) and counted in [`Stats`].
//!
//! [`TurnReader`] streams turns from any [`BufRead`] with bounded memory (plain, speaker and JSONL
//! inputs); [`parse`] is the convenience over a byte slice.
//!
//! ```
//! use lethe_render::transcript::{parse, Format, ParseOptions};
//! let t = parse(b"User: hi there\nAssistant: hello!\n", &ParseOptions::new())?;
//! assert_eq!(t.format, Format::Speaker);
//! assert_eq!(t.turns.len(), 2);
//! assert_eq!(t.turns[1].speaker, "Assistant");
//! # Ok::<(), lethe_render::Error>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, Chain, Cursor, Read};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// How many bytes at the start of an input are examined to detect its format and speakers.
pub const SNIFF_BYTES: usize = 64 * 1024;

/// How many of a session's latest speaker lines weigh in when an unknown name is judged.
const RECENT_TURNS: usize = 64;

/// Speaker names recognised in `Speaker: text` transcripts without further evidence (any case).
pub const BUILTIN_SPEAKERS: &[&str] = &[
    "user",
    "assistant",
    "system",
    "tool",
    "human",
    "ai",
    "agent",
    "developer",
    "function",
    "model",
    "bot",
];

/// One turn of dialogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// Who spoke (`"User"`, `"assistant"`, ...); empty for plain text.
    pub speaker: String,
    /// What was said, sanitised (no control characters other than `\n`, no tabs).
    pub text: String,
    /// When, as written in the input (not parsed).
    pub timestamp: Option<String>,
    /// The session the turn belongs to, as written in the input (e.g. `"Session 3 · 2026-03-14"`).
    pub session: Option<String>,
    /// True when this turn is the continuation of the previous one: the streaming reader splits a turn
    /// longer than [`ParseOptions::max_turn_bytes`] at a line boundary. Renderers draw no label for it.
    #[serde(default)]
    pub continued: bool,
}

impl Turn {
    /// A turn with a speaker and text, no timestamp, no session.
    pub fn new(speaker: impl Into<String>, text: impl Into<String>) -> Self {
        Turn {
            speaker: speaker.into(),
            text: text.into(),
            timestamp: None,
            session: None,
            continued: false,
        }
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp: impl Into<String>) -> Self {
        self.timestamp = Some(timestamp.into());
        self
    }

    /// Sets the session.
    pub fn with_session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }
}

/// A transcript format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Detect from the first [`SNIFF_BYTES`] bytes (see [`detect_format`]).
    #[default]
    Auto,
    /// Plain text: one turn per paragraph (blank-line separated), no speaker.
    Plain,
    /// `Speaker: text` lines; a line that does not start with a known speaker continues the previous
    /// turn; `=== Session ... ===` lines start a session.
    Speaker,
    /// JSON Lines: one `{"role": ..., "content": ...}` object per line.
    Jsonl,
    /// An OpenAI-style JSON array of messages, or an object with a `"messages"` array.
    #[serde(rename = "openai")]
    OpenAi,
}

impl Format {
    /// The name used on the command line (`auto`, `plain`, `speaker`, `jsonl`, `openai`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Plain => "plain",
            Format::Speaker => "speaker",
            Format::Jsonl => "jsonl",
            Format::OpenAi => "openai",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Format::Auto),
            "plain" | "text" | "txt" => Ok(Format::Plain),
            "speaker" | "speakers" => Ok(Format::Speaker),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            "openai" | "open-ai" | "json" => Ok(Format::OpenAi),
            _ => Err(Error::UnknownName {
                what: "transcript format",
                value: s.to_string(),
                expected: "auto, plain, speaker, jsonl, openai",
            }),
        }
    }
}

/// Options for parsing a transcript. Build with [`ParseOptions::new`] and the chained setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOptions {
    /// The format, or [`Format::Auto`] to detect it.
    pub format: Format,
    /// Replace invalid UTF-8 with U+FFFD (counted) instead of failing.
    pub lossy: bool,
    /// Tab stops every this many columns (at least 1).
    pub tab_width: usize,
    /// Extra speaker names to recognise in `Speaker: text` transcripts (any case).
    pub speakers: Vec<String>,
    /// Longest turn the streaming reader keeps in memory before splitting it (see [`Turn::continued`]).
    pub max_turn_bytes: usize,
    /// Longest line (plain and speaker formats) read at once; longer lines are read in pieces.
    pub max_line_bytes: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            format: Format::Auto,
            lossy: false,
            tab_width: 4,
            speakers: Vec::new(),
            max_turn_bytes: 256 * 1024,
            max_line_bytes: 64 * 1024,
        }
    }
}

impl ParseOptions {
    /// Defaults: detect the format, strict UTF-8, tabs of 4, 256 KiB turns, 64 KiB line pieces.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the format.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Sets lossy UTF-8 decoding.
    pub fn lossy(mut self, lossy: bool) -> Self {
        self.lossy = lossy;
        self
    }

    /// Sets the tab width (clamped to at least 1).
    pub fn tab_width(mut self, width: usize) -> Self {
        self.tab_width = width.max(1);
        self
    }

    /// Adds a speaker name to recognise.
    pub fn speaker(mut self, name: impl Into<String>) -> Self {
        self.speakers.push(name.into());
        self
    }

    /// Sets the streaming turn limit in bytes (at least 1 KiB).
    pub fn max_turn_bytes(mut self, bytes: usize) -> Self {
        self.max_turn_bytes = bytes.max(1024);
        self
    }
}

/// What parsing changed or noticed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes read.
    pub bytes: u64,
    /// Lines read.
    pub lines: u64,
    /// Control characters replaced by a visible marker.
    pub control_chars: u64,
    /// Tabs expanded to spaces.
    pub tabs_expanded: u64,
    /// Invalid UTF-8 sequences replaced by U+FFFD (lossy mode only).
    pub invalid_utf8: u64,
}

/// A parsed transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The format the input was read as (never [`Format::Auto`]).
    pub format: Format,
    /// The turns, in order.
    pub turns: Vec<Turn>,
    /// What parsing changed.
    pub stats: Stats,
}

/// Parses a whole transcript held in memory.
///
/// Errors: [`Error::EmptyTranscript`] when there is no text, [`Error::InvalidUtf8`] with the byte
/// offset (unless `lossy`), [`Error::Json`] with the line for malformed JSON, [`Error::Transcript`]
/// for a message without a role or content.
pub fn parse(bytes: &[u8], opts: &ParseOptions) -> Result<Transcript> {
    let mut reader = TurnReader::new(bytes, opts)?;
    let mut turns = Vec::new();
    for turn in reader.by_ref() {
        turns.push(turn?);
    }
    Ok(Transcript {
        format: reader.format(),
        turns,
        stats: reader.stats(),
    })
}

/// Replaces control characters and expands tabs, as described in the module docs.
/// `column` is the column at which `s` starts (for tab stops); it is updated.
pub fn sanitize_into(
    s: &str,
    tab_width: usize,
    column: &mut usize,
    out: &mut String,
    stats: &mut Stats,
) {
    let tab_width = tab_width.max(1);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                out.push('\n');
                *column = 0;
            }
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
                *column = 0;
            }
            '\t' => {
                let n = tab_width - (*column % tab_width);
                out.extend(std::iter::repeat_n(' ', n));
                *column += n;
                stats.tabs_expanded += 1;
            }
            c if (c as u32) < 0x20 || ('\u{7f}'..='\u{9f}').contains(&c) => {
                out.push('\u{FFFD}');
                *column += 1;
                stats.control_chars += 1;
            }
            '\u{feff}' if out.is_empty() && *column == 0 => {}
            c => {
                out.push(c);
                *column += 1;
            }
        }
    }
}

/// Detects the format of a transcript from its first bytes (see [`SNIFF_BYTES`]).
///
/// A `[` followed by `{` or `]` is an OpenAI array; a first line that is a whole JSON object is JSON
/// Lines, and any other leading `{` an OpenAI object; text whose lines start with known speakers (at
/// least two such lines, or a first line that is one) is the speaker format; anything else is plain.
pub fn detect_format(head: &[u8], extra_speakers: &[String]) -> Format {
    let text = String::from_utf8_lossy(head);
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if let Some(rest) = trimmed.strip_prefix('[') {
        let next = rest.trim_start().chars().next();
        if matches!(next, Some('{') | Some(']')) {
            return Format::OpenAi;
        }
    }
    if trimmed.starts_with('{') {
        let first = trimmed.lines().next().unwrap_or("");
        return match serde_json::from_str::<Value>(first) {
            Ok(Value::Object(_)) => Format::Jsonl,
            _ => Format::OpenAi,
        };
    }
    let known = Speakers::from_head(&text, extra_speakers);
    let mut count = 0usize;
    let mut first_content_is_speaker = None;
    for line in text.lines() {
        if line.trim().is_empty() || session_header(line).is_some() {
            continue;
        }
        let is_speaker = known.split(line).is_some();
        first_content_is_speaker.get_or_insert(is_speaker);
        if is_speaker {
            count += 1;
        }
    }
    if count >= 2 || first_content_is_speaker == Some(true) {
        Format::Speaker
    } else {
        Format::Plain
    }
}

/// The inside of a `=== Session 3 · 2026-03-14 ===` line.
fn session_header(line: &str) -> Option<&str> {
    let t = line.trim();
    if t.len() >= 6 && t.starts_with("===") && t.ends_with("===") {
        let inner = t.trim_matches('=').trim();
        if !inner.is_empty() {
            return Some(inner);
        }
    }
    None
}

/// Whether `name` looks like a speaker name: 1 to 3 words of letters, digits, `_`, `-`, `.`, `'`,
/// at most 32 bytes, starting with a letter.
fn plausible_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 32 || name != name.trim() {
        return false;
    }
    if !name.chars().next().is_some_and(char::is_alphabetic) {
        return false;
    }
    let words = name.split(' ').count();
    words <= 3
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.' | '\''))
}

/// The speaker names a speaker-format reader recognises.
#[derive(Debug, Clone, Default)]
struct Speakers {
    names: Vec<String>,
}

impl Speakers {
    /// Built-ins, the extra names, and every plausible capitalised name that starts at least two
    /// lines of `head` and at least a quarter as many lines as the most frequent speaker (so that
    /// `Note:` or `Error:` inside a turn does not become a speaker).
    fn from_head(head: &str, extra: &[String]) -> Self {
        let mut names: Vec<String> = BUILTIN_SPEAKERS.iter().map(|s| s.to_string()).collect();
        names.extend(extra.iter().map(|s| s.to_lowercase()));
        names.sort();
        names.dedup();
        let known = Speakers {
            names: names.clone(),
        };
        // In a transcript whose known speakers' turns follow blank lines, a new name must too:
        // `Key: value` lines inside a turn follow the line before them.
        let separated = blank_separated(head, &known);
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut after_blank = true;
        for line in head.lines() {
            let blank_before = after_blank;
            after_blank = line.trim().is_empty() || session_header(line).is_some();
            if separated && !blank_before {
                continue;
            }
            if let Some((_, name, _)) = split_speaker_line(line) {
                if plausible_name(name) && name.chars().next().is_some_and(char::is_uppercase) {
                    let lower = name.to_lowercase();
                    match seen.iter_mut().find(|(n, _)| *n == lower) {
                        Some((_, c)) => *c += 1,
                        None => seen.push((lower, 1)),
                    }
                }
            }
        }
        let most = seen.iter().map(|(_, c)| *c).max().unwrap_or(0);
        let threshold = most.div_ceil(4).max(2);
        names.extend(
            seen.into_iter()
                .filter(|(_, c)| *c >= threshold)
                .map(|(n, _)| n),
        );
        names.sort();
        names.dedup();
        Speakers { names }
    }

    /// Whether `lower` (a lowercase name) is a known speaker.
    fn knows(&self, lower: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(lower))
            .is_ok()
    }

    /// Adds a speaker name.
    fn learn(&mut self, name: &str) {
        let lower = name.to_lowercase();
        if let Err(at) = self.names.binary_search(&lower) {
            self.names.insert(at, lower);
        }
    }

    /// `(timestamp, speaker, rest)` when the line starts with a known speaker.
    fn split<'a>(&self, line: &'a str) -> Option<(Option<&'a str>, &'a str, &'a str)> {
        let (ts, name, rest) = split_speaker_line(line)?;
        let lower = name.to_lowercase();
        self.names
            .binary_search(&lower)
            .ok()
            .map(|_| (ts, name, rest))
    }
}

/// Whether the known speakers' turns in `text` follow blank lines (or headers, or the start): at
/// least four such turns, four in five of them separated.
fn blank_separated(text: &str, known: &Speakers) -> bool {
    let (mut lines, mut separated) = (0usize, 0usize);
    let mut after_blank = true;
    for line in text.lines() {
        if known.split(line).is_some() {
            lines += 1;
            separated += usize::from(after_blank);
        }
        after_blank = line.trim().is_empty() || session_header(line).is_some();
    }
    lines >= 4 && separated * 5 >= lines * 4
}

/// Splits `[ts] Name: rest` / `Name: rest` without checking the name against a list.
fn split_speaker_line(line: &str) -> Option<(Option<&str>, &str, &str)> {
    let mut s = line;
    let mut ts = None;
    if let Some(after) = s.strip_prefix('[') {
        let close = after.find(']')?;
        if close == 0 || close > 40 {
            return None;
        }
        ts = Some(after[..close].trim());
        s = after[close + 1..].trim_start();
    }
    let colon = s.find(':')?;
    if colon == 0 || colon > 32 {
        return None;
    }
    let name = &s[..colon];
    let rest = &s[colon + 1..];
    // "https://..." and "12:30" are not speakers: the colon must end the line or be followed by a space.
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    if !plausible_name(name) {
        return None;
    }
    let rest = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('\t'))
        .unwrap_or(rest);
    Some((ts, name, rest))
}

/// One physical line (or a piece of an over-long one) read from the input.
struct RawLine {
    bytes: Vec<u8>,
    /// Byte offset of the piece in the input.
    offset: u64,
    /// 1-based line number.
    number: usize,
    /// Whether the piece ended with a newline (false for a cut-off piece or the last line).
    newline: bool,
    /// Whether the piece starts a line (the previous piece ended with a newline).
    starts_line: bool,
}

/// Streams [`Turn`]s from a reader with bounded memory.
///
/// Plain, speaker and JSONL inputs are read line by line (over-long lines in pieces, over-long turns
/// split, see [`ParseOptions`]); an OpenAI-style array is read whole, since a JSON array cannot be
/// streamed turn by turn. The iterator yields [`Error::EmptyTranscript`] if the input ends without a
/// turn; after an error it yields nothing more.
pub struct TurnReader<R: BufRead> {
    src: Chain<Cursor<Vec<u8>>, R>,
    opts: ParseOptions,
    format: Format,
    speakers: Speakers,
    stats: Stats,
    offset: u64,
    line_no: usize,
    /// Whether the previous piece ended a line (so the next piece starts a new line).
    at_line_start: bool,
    session: Option<String>,
    /// Pieces read ahead to decide whether an unknown name starts turns (speaker format).
    lookahead: VecDeque<RawLine>,
    lookahead_bytes: usize,
    /// The previous line was a session header (the next speaker line may bring a new name).
    after_header: bool,
    /// The previous line was blank.
    after_blank: bool,
    /// Turns are separated by blank lines (judged on the head; see `blank_separated`).
    separated: bool,
    /// The speakers (lowercase) of the last [`RECENT_TURNS`] speaker lines of this session.
    recent: VecDeque<String>,
    pending: Option<Turn>,
    /// Column of the end of `pending`'s text, for tab stops.
    column: usize,
    /// Blank lines seen after `pending`'s text, not yet appended (trailing ones are dropped).
    blank_run: usize,
    openai: Option<std::vec::IntoIter<Turn>>,
    produced: usize,
    done: bool,
}

impl<R: BufRead> fmt::Debug for TurnReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnReader")
            .field("format", &self.format)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<R: BufRead> TurnReader<R> {
    /// Reads the first [`SNIFF_BYTES`] bytes, resolves [`Format::Auto`] and prepares to stream.
    pub fn new(mut reader: R, opts: &ParseOptions) -> Result<Self> {
        let mut head = Vec::with_capacity(SNIFF_BYTES.min(8192));
        reader
            .by_ref()
            .take(SNIFF_BYTES as u64)
            .read_to_end(&mut head)
            .map_err(|e| Error::io("reading the transcript", e))?;
        if head.iter().all(u8::is_ascii_whitespace) && head.len() < SNIFF_BYTES {
            return Err(Error::EmptyTranscript);
        }
        let format = match opts.format {
            Format::Auto => detect_format(&head, &opts.speakers),
            f => f,
        };
        let head_text = String::from_utf8_lossy(&head);
        let speakers = Speakers::from_head(&head_text, &opts.speakers);
        let separated = blank_separated(&head_text, &speakers);
        Ok(TurnReader {
            src: Cursor::new(head).chain(reader),
            opts: opts.clone(),
            format,
            speakers,
            stats: Stats::default(),
            offset: 0,
            line_no: 0,
            at_line_start: true,
            session: None,
            lookahead: VecDeque::new(),
            lookahead_bytes: 0,
            after_header: false,
            after_blank: false,
            separated,
            recent: VecDeque::new(),
            pending: None,
            column: 0,
            blank_run: 0,
            openai: None,
            produced: 0,
            done: false,
        })
    }

    /// The format being read (never [`Format::Auto`]).
    pub fn format(&self) -> Format {
        self.format
    }

    /// What parsing has changed so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Reads one line, or a piece of at most `cap` bytes of a longer one (cut at a UTF-8 boundary).
    fn read_piece(&mut self, cap: Option<usize>) -> Result<Option<RawLine>> {
        let mut bytes = Vec::new();
        let offset = self.offset;
        let starts_line = self.at_line_start;
        if self.at_line_start {
            self.line_no += 1;
        }
        let number = self.line_no;
        let mut newline = false;
        loop {
            let buf = self.src.fill_buf().map_err(|e| {
                Error::io(format!("reading the transcript at byte {}", self.offset), e)
            })?;
            if buf.is_empty() {
                break;
            }
            let room = cap.map_or(usize::MAX, |c| c.saturating_sub(bytes.len()));
            let window = &buf[..buf.len().min(room)];
            let (take, found) = match window.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (window.len(), false),
            };
            bytes.extend_from_slice(&window[..take]);
            self.src.consume(take);
            self.offset += take as u64;
            if found {
                newline = true;
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
                break;
            }
            if cap.is_some_and(|c| bytes.len() >= c) {
                // Do not cut a UTF-8 sequence: finish the one the piece ends inside.
                let mut missing = utf8_missing(&bytes);
                while missing > 0 {
                    let buf = self.src.fill_buf().map_err(|e| {
                        Error::io(format!("reading the transcript at byte {}", self.offset), e)
                    })?;
                    let Some(&b) = buf.first() else { break };
                    if b & 0xC0 != 0x80 {
                        break;
                    }
                    bytes.push(b);
                    self.src.consume(1);
                    self.offset += 1;
                    missing -= 1;
                }
                break;
            }
        }
        if bytes.is_empty() && !newline {
            return Ok(None);
        }
        self.at_line_start = newline;
        self.stats.bytes = self.offset;
        if newline {
            self.stats.lines += 1;
        }
        Ok(Some(RawLine {
            bytes,
            offset,
            number,
            newline,
            starts_line,
        }))
    }

    /// Decodes a piece as UTF-8 (strict or lossy).
    fn decode(&mut self, raw: &RawLine) -> Result<String> {
        match std::str::from_utf8(&raw.bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) if !self.opts.lossy => Err(Error::InvalidUtf8 {
                offset: raw.offset + e.valid_up_to() as u64,
            }),
            Err(_) => {
                let bad = raw
                    .bytes
                    .utf8_chunks()
                    .filter(|c| !c.invalid().is_empty())
                    .count();
                self.stats.invalid_utf8 += bad as u64;
                Ok(String::from_utf8_lossy(&raw.bytes).into_owned())
            }
        }
    }

    /// Appends a line of text to the pending turn.
    fn append(&mut self, text: &str, new_line: bool) {
        let Some(turn) = self.pending.as_mut() else {
            return;
        };
        if new_line && !turn.text.is_empty() {
            for _ in 0..=self.blank_run {
                turn.text.push('\n');
            }
            self.column = 0;
        }
        self.blank_run = 0;
        sanitize_into(
            text,
            self.opts.tab_width,
            &mut self.column,
            &mut turn.text,
            &mut self.stats,
        );
    }

    fn start_turn(&mut self, speaker: &str, timestamp: Option<&str>) -> Option<Turn> {
        let done = self.pending.take();
        let mut turn = Turn::new(speaker, String::new());
        turn.timestamp = timestamp.map(str::to_string);
        turn.session = self.session.clone();
        self.pending = Some(turn);
        self.column = 0;
        self.blank_run = 0;
        done.filter(|t| !t.text.trim().is_empty() || !t.speaker.is_empty())
    }

    /// If the pending turn has grown past the limit, splits it: returns the full part.
    fn split_if_long(&mut self) -> Option<Turn> {
        let long = self
            .pending
            .as_ref()
            .is_some_and(|t| t.text.len() >= self.opts.max_turn_bytes);
        if !long {
            return None;
        }
        let done = self.pending.take()?;
        let mut next = Turn::new(done.speaker.clone(), String::new());
        next.timestamp = done.timestamp.clone();
        next.session = done.session.clone();
        next.continued = true;
        self.pending = Some(next);
        self.column = 0;
        self.blank_run = 0;
        Some(done)
    }

    /// Next turn of a line-based format (plain or speaker).
    /// The next piece: read ahead first, then from the input.
    fn next_piece(&mut self) -> Result<Option<RawLine>> {
        if let Some(raw) = self.lookahead.pop_front() {
            self.lookahead_bytes -= raw.bytes.len();
            return Ok(Some(raw));
        }
        self.read_piece(Some(self.opts.max_line_bytes))
    }

    /// Whether an unknown but plausible name at the start of a line starts a turn: right after a
    /// session header (a new conversation brings new speakers), or when the name starts at least
    /// two lines of this session within the next [`SNIFF_BYTES`], and at least a quarter as many
    /// as the busiest speaker over those lines and the session's last [`RECENT_TURNS`] turns (so
    /// `Note:` or `Error:` inside a turn stays text). In a transcript whose turns are separated by
    /// blank lines, a new name must follow one too.
    fn learns_speaker(&mut self, name: &str) -> Result<bool> {
        if !name.chars().next().is_some_and(char::is_uppercase) {
            return Ok(false);
        }
        if self.after_header {
            return Ok(true);
        }
        if self.separated && !self.after_blank {
            return Ok(false);
        }
        while self.lookahead_bytes < SNIFF_BYTES && self.lookahead.len() < 4096 {
            let Some(raw) = self.read_piece(Some(self.opts.max_line_bytes))? else {
                break;
            };
            self.lookahead_bytes += raw.bytes.len();
            self.lookahead.push_back(raw);
        }
        let lower = name.to_lowercase();
        let mut counts: Vec<(String, usize)> = vec![(lower.clone(), 1)];
        let mut add = |n: String| match counts.iter_mut().find(|(m, _)| *m == n) {
            Some((_, c)) => *c += 1,
            None => counts.push((n, 1)),
        };
        for n in &self.recent {
            add(n.clone());
        }
        let mut after_blank = false;
        for raw in self.lookahead.iter().filter(|r| r.starts_line) {
            let text = String::from_utf8_lossy(&raw.bytes);
            if session_header(&text).is_some() {
                break;
            }
            let blank_before = after_blank;
            after_blank = text.trim().is_empty();
            if self.separated && !blank_before {
                continue;
            }
            if let Some((_, n, _)) = split_speaker_line(&text) {
                add(n.to_lowercase());
            }
        }
        let mine = counts[0].1;
        let busiest = counts
            .iter()
            .filter(|(n, _)| self.speakers.knows(n) || *n == lower)
            .map(|(_, c)| *c)
            .max()
            .unwrap_or(mine);
        Ok(mine >= 2 && mine * 4 >= busiest)
    }

    fn next_text_turn(&mut self) -> Result<Option<Turn>> {
        loop {
            let Some(raw) = self.next_piece()? else {
                return Ok(self.pending.take().filter(|t| !t.text.trim().is_empty()));
            };
            let continuing = !raw.starts_line;
            let line = self.decode(&raw)?;
            if continuing {
                self.append(&line, false);
            } else if self.format == Format::Speaker {
                if let Some(inner) = session_header(&line) {
                    self.session = Some(inner.to_string());
                    self.recent.clear();
                    self.after_header = true;
                    self.after_blank = false;
                    if let Some(done) = self.start_turn("", None) {
                        self.pending = None;
                        return Ok(Some(done));
                    }
                    self.pending = None;
                    continue;
                }
                if line.trim().is_empty() {
                    self.after_blank = true;
                    if self.pending.as_ref().is_some_and(|t| !t.text.is_empty()) {
                        self.blank_run += 1;
                    }
                    continue;
                }
                let mut split = self.speakers.split(&line).map(|(ts, name, rest)| {
                    (ts.map(str::to_string), name.to_string(), rest.to_string())
                });
                if split.is_none() {
                    let candidate = split_speaker_line(&line).map(|(ts, name, rest)| {
                        (ts.map(str::to_string), name.to_string(), rest.to_string())
                    });
                    if let Some((ts, name, rest)) = candidate {
                        if self.learns_speaker(&name)? {
                            self.speakers.learn(&name);
                            split = Some((ts, name, rest));
                        }
                    }
                }
                self.after_header = false;
                self.after_blank = false;
                if let Some((ts, name, rest)) = split {
                    if self.recent.len() == RECENT_TURNS {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(name.to_lowercase());
                    let done = self.start_turn(&name, ts.as_deref());
                    self.append(&rest, false);
                    if done.is_some() {
                        return Ok(done);
                    }
                    continue;
                }
                if self.pending.is_none() {
                    self.start_turn("", None);
                }
                self.append(&line, true);
            } else {
                // Plain: paragraphs separated by blank lines.
                if line.trim().is_empty() {
                    if let Some(done) = self.pending.take() {
                        return Ok(Some(done));
                    }
                    continue;
                }
                if self.pending.is_none() {
                    self.start_turn("", None);
                }
                self.append(&line, true);
            }
            if let Some(done) = self.split_if_long() {
                return Ok(Some(done));
            }
            let _ = raw.newline;
        }
    }

    /// Next turn of a JSON Lines input.
    fn next_jsonl_turn(&mut self) -> Result<Option<Turn>> {
        loop {
            let Some(raw) = self.read_piece(None)? else {
                return Ok(None);
            };
            let line = self.decode(&raw)?;
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&line).map_err(|e| Error::Json {
                line: raw.number,
                column: e.column(),
                source: e,
            })?;
            let turn = message_to_turn(&value, &self.opts, &mut self.stats).map_err(|message| {
                Error::Transcript {
                    line: raw.number,
                    message,
                }
            })?;
            return Ok(Some(turn));
        }
    }

    /// Reads the whole OpenAI-style document.
    fn load_openai(&mut self) -> Result<Vec<Turn>> {
        let mut bytes = Vec::new();
        self.src
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("reading the transcript", e))?;
        self.stats.bytes = bytes.len() as u64;
        let text = match std::str::from_utf8(&bytes) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(e) if !self.opts.lossy => {
                return Err(Error::InvalidUtf8 {
                    offset: e.valid_up_to() as u64,
                })
            }
            Err(_) => {
                self.stats.invalid_utf8 += bytes
                    .utf8_chunks()
                    .filter(|c| !c.invalid().is_empty())
                    .count() as u64;
                String::from_utf8_lossy(&bytes)
            }
        };
        self.stats.lines = text.lines().count() as u64;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            line: e.line(),
            column: e.column(),
            source: e,
        })?;
        let messages = match &value {
            Value::Array(items) => items,
            Value::Object(map) => match map.get("messages") {
                Some(Value::Array(items)) => items,
                _ => {
                    return Err(Error::Transcript {
                        line: 1,
                        message: "a JSON object transcript needs a \"messages\" array".into(),
                    })
                }
            },
            _ => {
                return Err(Error::Transcript {
                    line: 1,
                    message: "an OpenAI transcript is an array of messages".into(),
                })
            }
        };
        let mut turns = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let turn = message_to_turn(m, &self.opts, &mut self.stats).map_err(|message| {
                Error::Transcript {
                    line: i + 1,
                    message: format!("message {}: {message}", i + 1),
                }
            })?;
            turns.push(turn);
        }
        Ok(turns)
    }

    fn next_turn(&mut self) -> Result<Option<Turn>> {
        match self.format {
            Format::Jsonl => self.next_jsonl_turn(),
            Format::OpenAi => {
                if self.openai.is_none() {
                    let turns = self.load_openai()?;
                    self.openai = Some(turns.into_iter());
                }
                Ok(self.openai.as_mut().and_then(Iterator::next))
            }
            _ => self.next_text_turn(),
        }
    }
}

impl<R: BufRead> Iterator for TurnReader<R> {
    type Item = Result<Turn>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_turn() {
            Ok(Some(turn)) => {
                self.produced += 1;
                Some(Ok(turn))
            }
            Ok(None) => {
                self.done = true;
                (self.produced == 0).then_some(Err(Error::EmptyTranscript))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// How many continuation bytes the last UTF-8 sequence of `bytes` still lacks (0 if complete).
fn utf8_missing(bytes: &[u8]) -> usize {
    let n = bytes.len();
    for back in 1..=n.min(4) {
        let b = bytes[n - back];
        if b & 0xC0 != 0x80 {
            let len: usize = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return len.saturating_sub(back);
        }
    }
    0
}

/// Converts one JSON message to a turn; the error is a message for [`Error::Transcript`].
fn message_to_turn(
    value: &Value,
    opts: &ParseOptions,
    stats: &mut Stats,
) -> std::result::Result<Turn, String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "expected a JSON object, found {}",
            json_kind(value)
        ));
    };
    let speaker = ["role", "speaker", "author", "from"]
        .iter()
        .find_map(|k| match map.get(*k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("role").and_then(Value::as_str).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| "message has no \"role\" (or \"speaker\") string".to_string())?;
    let content = ["content", "text", "message"]
        .iter()
        .find_map(|k| map.get(*k))
        .ok_or_else(|| "message has no \"content\" (or \"text\")".to_string())?;
    let raw = content_text(content)?;
    let mut text = String::with_capacity(raw.len());
    let mut column = 0;
    sanitize_into(&raw, opts.tab_width, &mut column, &mut text, stats);
    let scalar = |keys: &[&str]| {
        keys.iter().find_map(|k| match map.get(*k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
    };
    Ok(Turn {
        speaker,
        text,
        timestamp: scalar(&["timestamp", "time", "created_at", "ts"]),
        session: scalar(&["session", "session_id"]),
        continued: false,
    })
}

/// Text of a message's content: a string, null, or a list of parts (strings or `{"text": ...}`;
/// other parts become a bracketed placeholder naming their type).
fn content_text(content: &Value) -> std::result::Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                match part {
                    Value::String(s) => out.push(s.clone()),
                    Value::Object(o) => {
                        if let Some(t) = o.get("text").and_then(Value::as_str) {
                            out.push(t.to_string());
                        } else {
                            let kind = o.get("type").and_then(Value::as_str).unwrap_or("part");
                            out.push(format!("[{kind}]"));
                        }
                    }
                    other => {
                        return Err(format!(
                            "content part must be a string or an object, found {}",
                            json_kind(other)
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
        other => Err(format!(
            "\"content\" must be a string or a list of parts, found {}",
            json_kind(other)
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

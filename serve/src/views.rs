//! What the API takes and gives, shared by REST and MCP: request bodies, scope validation, and
//! JSON views of the memory's answers.

use lethe::{Context, Mode, PageRecord, Scope, Tier, Turn, Usage};
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// The longest scope field (session, user or agent) the service accepts.
pub(crate) const MAX_SCOPE_LEN: usize = 128;

/// The most turns one append may carry.
pub(crate) const MAX_TURNS_PER_APPEND: usize = 1_000;

/// A turn as a client sends it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TurnIn {
    pub speaker: String,
    pub text: String,
    #[serde(default)]
    pub session: Option<String>,
    /// A time label shown on the page (free text, e.g. `2026-12-01 09:30`).
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl TurnIn {
    pub fn into_turn(self) -> Turn {
        let mut turn = Turn::new(self.speaker, self.text);
        turn.session = self.session;
        turn.timestamp = self.timestamp;
        turn
    }
}

/// The body of an append.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendIn {
    pub turns: Vec<TurnIn>,
}

/// What to recall: one page, or the pages of a scope's turn range.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecallIn {
    #[serde(default)]
    pub page: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub start: Option<u64>,
    #[serde(default)]
    pub end: Option<u64>,
}

impl RecallIn {
    pub fn target(self) -> Result<lethe::RecallTarget, ApiError> {
        match (self.page, self.scope) {
            (Some(page), None) => Ok(lethe::RecallTarget::Page(lethe::PageId(page))),
            (None, Some(session)) => {
                let scope = scope(&session, self.user.as_deref(), self.agent.as_deref())?;
                let (Some(start), Some(end)) = (self.start, self.end) else {
                    return Err(ApiError::invalid(
                        "recall by turns needs `start` and `end` (turn indices, end exclusive)",
                    ));
                };
                if start >= end {
                    return Err(ApiError::invalid(format!(
                        "turn range {start}..{end} is empty: `end` must be greater than `start`"
                    )));
                }
                Ok(lethe::RecallTarget::Turns { scope, start, end })
            }
            _ => Err(ApiError::invalid(
                "recall needs either `page` (a page id) or `scope` with `start` and `end`",
            )),
        }
    }
}

/// Checks one scope field: 1 to 128 characters from letters, digits and `.` `_` `-` `:` `@`.
fn scope_field(what: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_SCOPE_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} {value:?} is not a valid name: use 1 to {MAX_SCOPE_LEN} characters from \
             letters, digits and . _ - : @"
        )))
    }
}

/// A validated scope from its session name and optional user and agent.
pub(crate) fn scope(
    session: &str,
    user: Option<&str>,
    agent: Option<&str>,
) -> Result<Scope, ApiError> {
    scope_field("scope", session)?;
    let mut scope = Scope::session(session);
    if let Some(user) = user {
        scope_field("user", user)?;
        scope = scope.with_user(user);
    }
    if let Some(agent) = agent {
        scope_field("agent", agent)?;
        scope = scope.with_agent(agent);
    }
    Ok(scope)
}

/// Checks an append's size before it touches the memory.
pub(crate) fn check_turns(turns: &[TurnIn]) -> Result<(), ApiError> {
    if turns.is_empty() {
        return Err(ApiError::invalid(
            "`turns` is empty: send at least one turn",
        ));
    }
    if turns.len() > MAX_TURNS_PER_APPEND {
        return Err(ApiError::invalid(format!(
            "{} turns in one append; the limit is {MAX_TURNS_PER_APPEND}",
            turns.len()
        )));
    }
    for (i, t) in turns.iter().enumerate() {
        if t.speaker.trim().is_empty() {
            return Err(ApiError::invalid(format!("turns[{i}].speaker is empty")));
        }
    }
    Ok(())
}

/// A page's metadata.
#[derive(Debug, Serialize)]
pub(crate) struct PageView {
    pub id: u64,
    pub scope: Scope,
    /// Turn indices `[start, end)`.
    pub turns: (u64, u64),
    pub tier: Tier,
    pub pinned: bool,
    pub access_count: u64,
    pub created: u64,
    pub last_access: u64,
    pub text_tokens: u64,
    pub text_retained: bool,
    pub tier_changes: u64,
    /// Where its PNG is served (at its own tier), unless evicted.
    pub image_url: Option<String>,
}

impl PageView {
    pub fn of(record: &PageRecord) -> Self {
        Self {
            id: record.id.0,
            scope: record.scope.clone(),
            turns: (record.turns.start, record.turns.end),
            tier: record.tier,
            pinned: record.pinned,
            access_count: record.access_count,
            created: record.created.time,
            last_access: record.last_access.time,
            text_tokens: record.layout.text_tokens,
            text_retained: record.text.is_some(),
            tier_changes: record.changes,
            image_url: match record.tier {
                Tier::At(mode) => Some(image_url(record.id.0, mode)),
                Tier::Evicted => None,
            },
        }
    }
}

pub(crate) fn image_url(page: u64, mode: Mode) -> String {
    format!("/v1/pages/{page}/image?mode={}", mode.name())
}

/// A page in a context.
#[derive(Debug, Serialize)]
pub(crate) struct ContextPageView {
    pub id: u64,
    pub mode: Mode,
    pub positions: u64,
    pub width: u32,
    pub height: u32,
    pub image_url: String,
}

/// A budgeted context.
#[derive(Debug, Serialize)]
pub(crate) struct ContextView {
    pub turns: Vec<Turn>,
    pub pages: Vec<ContextPageView>,
    pub dropped_pages: Vec<u64>,
    pub usage: Usage,
}

impl ContextView {
    pub fn of(context: &Context) -> Self {
        Self {
            turns: context.turns.clone(),
            pages: context
                .pages
                .iter()
                .map(|p| ContextPageView {
                    id: p.id.0,
                    mode: p.mode,
                    positions: p.positions,
                    width: p.image.width,
                    height: p.image.height,
                    image_url: image_url(p.id.0, p.mode),
                })
                .collect(),
            dropped_pages: context.dropped_pages.iter().map(|p| p.0).collect(),
            usage: context.usage.clone(),
        }
    }
}

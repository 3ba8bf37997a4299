//! The MCP server: five tools over the same memory as the REST API, served over stdio or
//! streamable HTTP (stateless, JSON responses) with the official Rust SDK, `rmcp`.

use std::sync::Arc;

use base64::Engine as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::views::{self, RecallIn, TurnIn};
use crate::{now, ApiError, ServeError, Service};

/// The MCP face of a [`Service`].
#[derive(Clone)]
pub(crate) struct LetheMcp {
    service: Service,
}

const INSTRUCTIONS: &str = "Lethe is an optical memory for this conversation's history. Call \
`remember` with turns as they happen; call `context` with a token budget to get the recent turns \
as text and older history as page images (read them as you would a screenshot); call `recall` to \
read a page (or a turn range) back as text; `pin` keeps a page from fading; `stats` counts the \
store by tier.";

/// The streamable HTTP service mounted at `/mcp`. Stateless: every POST is answered on its own
/// (JSON, no SSE), so any HTTP client can call it. Without a token, only loopback `Host` headers
/// are accepted (DNS-rebinding protection); with one, the token guards every request instead.
pub(crate) fn http_service(
    service: Service,
    token_required: bool,
) -> StreamableHttpService<LetheMcp, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default();
    config.legacy_session_mode = false;
    config.json_response = true;
    if token_required {
        config = config.disable_allowed_hosts();
    }
    StreamableHttpService::new(
        move || {
            Ok(LetheMcp {
                service: service.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// Serves MCP over stdin/stdout until the client closes stdin.
pub(crate) async fn serve_stdio(service: Service) -> Result<(), ServeError> {
    let running = LetheMcp { service }
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ServeError::Io {
            what: "starting the MCP session on stdio".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    running.waiting().await.map_err(|e| ServeError::Io {
        what: "serving MCP on stdio".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(())
}

/// The tools, in the order `tools/list` gives them.
const TOOL_NAMES: [&str; 5] = ["remember", "context", "recall", "stats", "pin"];

fn unknown_tool(name: &str) -> String {
    format!(
        "no tool named {name:?}; the tools are {}",
        TOOL_NAMES.join(", ")
    )
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => unreachable!("tool schemas are objects"),
    }
}

fn scope_properties() -> Value {
    json!({
        "scope": {"type": "string", "description": "The conversation (session) name: 1-128 of letters, digits, . _ - : @"},
        "user": {"type": "string", "description": "Optional end-user name, narrowing the scope"},
        "agent": {"type": "string", "description": "Optional agent name, narrowing the scope"}
    })
}

fn with_scope(mut extra: Value, required: &[&str]) -> Value {
    let mut properties = scope_properties();
    if let (Value::Object(p), Value::Object(e)) = (&mut properties, &mut extra) {
        p.append(e);
    }
    json!({"type": "object", "properties": properties, "required": required})
}

fn read_only() -> ToolAnnotations {
    let mut a = ToolAnnotations::new();
    a.read_only_hint = Some(true);
    a
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "remember",
            "Append conversation turns to a scope's memory. Recent turns stay text; older ones \
             become page images that fade with age.",
            schema(with_scope(
                json!({"turns": {
                    "type": "array", "minItems": 1,
                    "items": {"type": "object", "required": ["speaker", "text"], "properties": {
                        "speaker": {"type": "string"},
                        "text": {"type": "string"},
                        "session": {"type": "string", "description": "Session header shown on the page"},
                        "timestamp": {"type": "string", "description": "Time label shown on the page"}
                    }}
                }}),
                &["scope", "turns"],
            )),
        ),
        Tool::new(
            "context",
            "The scope's history within a token budget: recent turns as text, older pages as \
             images (lower tiers are smaller, blurrier images).",
            schema(with_scope(
                json!({
                    "budget": {"type": "integer", "minimum": 1, "description": "Tokens: text tokens of the turns plus the pages' cost (DeepSeek-OCR decoder positions, or the provider's image tokens)"},
                    "provider": {"type": "string", "description": "Size and cost the pages for this provider's vision model: anthropic, openai or gemini (default: DeepSeek-OCR's tiers)"},
                    "model": {"type": "string", "description": "The provider's model (default: its first in Lethe's table)"}
                }),
                &["scope", "budget"],
            )),
        )
        .with_annotations(read_only()),
        Tool::new(
            "recall",
            "Read pages back as text: one page by id, or every page holding a scope's turns \
             start..end. Counts as a use of the page, which slows its fading.",
            schema(with_scope(
                json!({
                    "page": {"type": "integer", "minimum": 0},
                    "start": {"type": "integer", "minimum": 0},
                    "end": {"type": "integer", "minimum": 1}
                }),
                &[],
            )),
        ),
        Tool::new(
            "stats",
            "Pages, turns, tokens and bytes of the whole store, by tier.",
            schema(json!({"type": "object", "properties": {}})),
        )
        .with_annotations(read_only()),
        Tool::new(
            "pin",
            "Pin a page so it keeps its tier (or unpin it).",
            schema(json!({"type": "object", "required": ["page", "pinned"], "properties": {
                "page": {"type": "integer", "minimum": 0},
                "pinned": {"type": "boolean"}
            }})),
        ),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RememberArgs {
    scope: String,
    user: Option<String>,
    agent: Option<String>,
    turns: Vec<TurnIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextArgs {
    scope: String,
    user: Option<String>,
    agent: Option<String>,
    budget: u64,
    provider: Option<String>,
    model: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinArgs {
    page: u64,
    pinned: bool,
}

fn args<T: for<'de> Deserialize<'de>>(
    tool: &str,
    arguments: Option<JsonObject>,
) -> Result<T, ApiError> {
    let value = Value::Object(arguments.unwrap_or_default());
    serde_json::from_value(value)
        .map_err(|e| ApiError::invalid(format!("{tool}: bad arguments: {e}")))
}

impl LetheMcp {
    async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
    ) -> Result<Vec<ContentBlock>, ApiError> {
        match name {
            "remember" => {
                let a: RememberArgs = args(name, arguments)?;
                let scope = views::scope(&a.scope, a.user.as_deref(), a.agent.as_deref())?;
                views::check_turns(&a.turns)?;
                let appended = self.service.append(scope, a.turns).await?;
                let (start, end) = appended.turns;
                Ok(vec![ContentBlock::text(format!(
                    "Remembered {} turns in scope {} (turns {start}..{end}).",
                    end - start,
                    a.scope
                ))])
            }
            "context" => {
                let a: ContextArgs = args(name, arguments)?;
                let scope = views::scope(&a.scope, a.user.as_deref(), a.agent.as_deref())?;
                match a.provider {
                    Some(p) => self.provider_context(scope, a.budget, p, a.model).await,
                    None => self.context(scope, a.budget).await,
                }
            }
            "recall" => {
                let a: RecallIn = args(name, arguments)?;
                let target = a.target()?;
                let recall = self
                    .service
                    .shared(move |lethe| Ok(lethe.recall(target, now())?))
                    .await?;
                Ok(recall
                    .pages
                    .iter()
                    .map(|p| {
                        let text = p
                            .decoded_text
                            .as_deref()
                            .or(p.stored_text.as_deref())
                            .unwrap_or("(nothing left: the page was evicted and its text dropped)");
                        let source = if p.decoded_text.is_some() {
                            "read from the image"
                        } else {
                            "stored text"
                        };
                        ContentBlock::text(format!(
                            "Page {} (turns {}..{}, {}, {source}):\n{text}",
                            p.id,
                            p.turns.0,
                            p.turns.1,
                            p.tier.name()
                        ))
                    })
                    .collect())
            }
            "stats" => {
                let report = self.service.shared(|lethe| Ok(lethe.report()?)).await?;
                let json = serde_json::to_string_pretty(&report)
                    .map_err(|e| ApiError::invalid(format!("stats: {e}")))?;
                Ok(vec![ContentBlock::text(json)])
            }
            "pin" => {
                let a: PinArgs = args(name, arguments)?;
                self.service
                    .shared(move |lethe| {
                        lethe.pin(lethe::PageId(a.page), a.pinned)?;
                        Ok(lethe.flush()?)
                    })
                    .await?;
                Ok(vec![ContentBlock::text(format!(
                    "Page {} {}.",
                    a.page,
                    if a.pinned { "pinned" } else { "unpinned" }
                ))])
            }
            other => Err(ApiError::invalid(unknown_tool(other))),
        }
    }

    /// Old pages as image content, oldest first, then the recent turns as text.
    async fn context(
        &self,
        scope: lethe::Scope,
        budget: u64,
    ) -> Result<Vec<ContentBlock>, ApiError> {
        let (context, pngs) = self
            .service
            .shared(move |lethe| {
                let context = lethe.context(&scope, budget, now())?;
                let pngs = context
                    .pages
                    .iter()
                    .map(|p| p.image.to_png())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(lethe::Error::from)?;
                Ok((context, pngs))
            })
            .await?;
        let mut blocks = Vec::with_capacity(2 * context.pages.len() + 1);
        let b64 = base64::engine::general_purpose::STANDARD;
        for (page, png) in context.pages.iter().zip(&pngs) {
            blocks.push(ContentBlock::text(format!(
                "Page {} ({} mode, {} positions): older history, as an image.",
                page.id,
                page.mode.name(),
                page.positions
            )));
            blocks.push(ContentBlock::image(b64.encode(png), "image/png"));
        }
        let mut recent = String::from("Recent turns:\n");
        for t in &context.turns {
            recent.push_str(&format!("{}: {}\n", t.speaker, t.text));
        }
        if !context.dropped_pages.is_empty() {
            recent.push_str(&format!(
                "({} older pages did not fit the budget of {budget} tokens.)\n",
                context.dropped_pages.len()
            ));
        }
        recent.push_str(&format!(
            "Cost: {} text tokens + {} page positions.",
            context.usage.text_tokens, context.usage.decoder_positions
        ));
        blocks.push(ContentBlock::text(recent));
        Ok(blocks)
    }
}

impl LetheMcp {
    /// Images sized, stacked and costed for a provider, oldest first, then the recent turns.
    async fn provider_context(
        &self,
        scope: lethe::Scope,
        budget: u64,
        provider: String,
        model: Option<String>,
    ) -> Result<Vec<ContentBlock>, ApiError> {
        let table = lethe::Providers::builtin();
        let entry = table.find(&provider, model.as_deref())?.clone();
        let context = self
            .service
            .shared(move |lethe| {
                Ok(lethe.provider_context(&scope, budget, &entry, model.as_deref())?)
            })
            .await?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut blocks = Vec::with_capacity(2 * context.images.len() + 1);
        for image in &context.images {
            blocks.push(ContentBlock::text(format!(
                "Turns {}..{} ({} pages, {} {} tokens): older history, as an image.",
                image.turns.0,
                image.turns.1,
                image.pages.len(),
                image.tokens,
                context.provider
            )));
            blocks.push(ContentBlock::image(b64.encode(&image.png), "image/png"));
        }
        let mut recent = String::from("Recent turns:\n");
        for t in &context.turns {
            recent.push_str(&format!("{}: {}\n", t.speaker, t.text));
        }
        let acc = &context.accounting;
        recent.push_str(&format!(
            "Cost: {} {} image tokens + {} text tokens; the same history as text: {} tokens \
             ({:.2}x).",
            context.image_tokens,
            context.provider,
            context.text_tokens,
            acc.included_text_tokens,
            acc.ratio
        ));
        blocks.push(ContentBlock::text(recent));
        Ok(blocks)
    }
}

impl ServerHandler for LetheMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("lethe", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !TOOL_NAMES.contains(&request.name.as_ref()) {
            return Err(ErrorData::invalid_params(unknown_tool(&request.name), None));
        }
        // Errors of the call itself (a bad scope, an unknown page) go back as a tool result
        // marked as an error, which the model can read and correct.
        let result = match self.call(&request.name, request.arguments).await {
            Ok(content) => CallToolResult::success(content),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!(
                "{}: {}",
                e.code, e.message
            ))]),
        };
        Ok(result.into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tool_names_are_the_tools_listed() {
        let listed: Vec<String> = super::tools().iter().map(|t| t.name.to_string()).collect();
        assert_eq!(listed, super::TOOL_NAMES);
    }
}

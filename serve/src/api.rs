//! The REST API (`/v1`), its errors, the token check and the body limit.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use lethe::{Mode, PageId};
use serde::Deserialize;
use serde_json::json;

use crate::views::{self, AppendIn, ContextView, PageView, RecallIn};
use crate::{now, ServeOptions, Service};

/// The OpenAPI document served at `/v1/openapi.json`.
const OPENAPI: &str = include_str!("openapi.json");

/// An error as the API returns it: an HTTP status, a stable code and a message that names what
/// and where. The body is `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`invalid`, `not_found`, `unauthorized`, ...).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code,
            self.status.as_u16(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A request the service cannot honour as sent (400).
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub(crate) fn panicked(e: tokio::task::JoinError) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the request's worker failed: {e}"),
        )
    }
}

impl From<lethe::Error> for ApiError {
    fn from(e: lethe::Error) -> Self {
        use lethe::StoreError as m;
        let message = e.to_string();
        match &e {
            lethe::Error::Store(m::PageNotFound(_)) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            lethe::Error::Store(m::InvalidInput(_))
            | lethe::Error::Invalid(_)
            | lethe::Error::Mode(_)
            | lethe::Error::Render(_) => Self::invalid(message),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        // axum answers a body of the wrong shape with 422; every malformed request is a 400
        // `invalid` here.
        let (status, code) = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            _ => (StatusCode::BAD_REQUEST, "invalid"),
        };
        Self::new(status, code, format!("request body: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::invalid(format!("path: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::invalid(format!("query: {}", r.body_text()))
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub(crate) fn router(service: Service, options: &ServeOptions) -> Router {
    let v1 = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/stats", get(stats))
        .route("/maintain", post(maintain))
        .route("/recall", post(recall))
        .route("/scopes/{scope}/turns", post(append))
        .route("/scopes/{scope}/context", get(context))
        .route("/scopes/{scope}/pages", get(pages))
        .route("/pages/{id}", get(page))
        .route("/pages/{id}/image", get(image))
        .route("/pages/{id}/history", get(history))
        .route("/pages/{id}/pin", put(pin));
    let limit = options.body_limit;
    Router::new()
        .nest("/v1", v1)
        .nest_service(
            "/mcp",
            crate::mcp::http_service(service.clone(), options.token.is_some()),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(service)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(move |req, next| {
            body_limit(limit, req, next)
        }))
        .layer(middleware::from_fn_with_state(
            options.token.clone(),
            require_token,
        ))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint at {}; see /v1/openapi.json", req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; see /v1/openapi.json",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Every request carries the token when one is set; compared in constant time.
async fn require_token(State(token): State<Option<String>>, req: Request, next: Next) -> Response {
    let Some(token) = token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.as_bytes(), token.as_bytes()) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs `Authorization: Bearer <token>` (the token in its --token-file)",
        )
        .into_response()
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a body whose declared length is over the limit, and caps any other body's reading at
/// it (MCP's handler reads its body itself, past axum's extractors).
async fn body_limit(limit: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "request body of {} bytes is over the limit of {limit} bytes",
                declared.unwrap_or(0)
            ),
        )
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let body = Body::new(http_body_util::Limited::new(body, limit));
    next.run(Request::from_parts(parts, body)).await
}

async fn health(State(service): State<Service>) -> ApiResult<Json<serde_json::Value>> {
    service
        .shared(|lethe| {
            Ok(Json(json!({
                "status": "ok",
                "version": env!("CARGO_PKG_VERSION"),
                "store": lethe.store().path().display().to_string(),
                "model": lethe.model().map(|m| m.name().to_string()),
                "tokenizer": lethe.tokenizer_name(),
            })))
        })
        .await
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn stats(State(service): State<Service>) -> ApiResult<Json<lethe::Report>> {
    service.shared(|lethe| Ok(Json(lethe.report()?))).await
}

async fn maintain(State(service): State<Service>) -> ApiResult<Json<lethe::Maintenance>> {
    service
        .exclusive(|lethe| Ok(Json(lethe.maintain(now())?)))
        .await
}

/// `user` and `agent` narrow a scope beyond its session name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeQuery {
    user: Option<String>,
    agent: Option<String>,
    budget: Option<u64>,
    /// A hosted model's provider (`anthropic`, `openai`, `gemini`): the context in its tokens,
    /// with the request body in its format.
    provider: Option<String>,
    /// The provider's model.
    model: Option<String>,
    /// The question that ends the provider request.
    question: Option<String>,
}

/// The validated scope a `/v1/scopes/{scope}/...` request names, with its query.
fn scoped(
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ScopeQuery>, QueryRejection>,
) -> ApiResult<(lethe::Scope, ScopeQuery)> {
    let Path(session) = path?;
    let Query(query) = query?;
    let scope = views::scope(&session, query.user.as_deref(), query.agent.as_deref())?;
    Ok((scope, query))
}

async fn append(
    State(service): State<Service>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ScopeQuery>, QueryRejection>,
    body: Result<Json<AppendIn>, JsonRejection>,
) -> ApiResult<Json<lethe::Appended>> {
    let (scope, _) = scoped(path, query)?;
    let Json(body) = body?;
    views::check_turns(&body.turns)?;
    service.append(scope, body.turns).await.map(Json)
}

impl Service {
    /// Appends and flushes before answering: an acknowledged turn survives a kill.
    pub(crate) async fn append(
        &self,
        scope: lethe::Scope,
        turns: Vec<views::TurnIn>,
    ) -> ApiResult<lethe::Appended> {
        let turns: Vec<lethe::Turn> = turns.into_iter().map(|t| t.into_turn()).collect();
        self.shared(move |lethe| {
            let appended = lethe.append(&scope, &turns, now())?;
            lethe.flush()?;
            Ok(appended)
        })
        .await
    }
}

async fn context(
    State(service): State<Service>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ScopeQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let (scope, query) = scoped(path, query)?;
    let budget = query
        .budget
        .ok_or_else(|| ApiError::invalid("context needs `budget` (tokens), e.g. ?budget=4000"))?;
    if let Some(provider) = query.provider {
        let table = lethe::Providers::builtin();
        let entry = table.find(&provider, query.model.as_deref())?.clone();
        let question = query
            .question
            .unwrap_or_else(|| "Using the conversation above, continue where it left off.".into());
        return service
            .shared(move |lethe| {
                let context =
                    lethe.provider_context(&scope, budget, &entry, query.model.as_deref())?;
                let mut report = serde_json::to_value(&context)
                    .map_err(|e| ApiError::invalid(format!("context report: {e}")))?;
                report["request"] = context.payload(&question, 1024);
                Ok(Json(report))
            })
            .await;
    }
    service
        .shared(move |lethe| {
            let view = ContextView::of(&lethe.context(&scope, budget, now())?);
            Ok(Json(
                serde_json::to_value(view)
                    .map_err(|e| ApiError::invalid(format!("context: {e}")))?,
            ))
        })
        .await
}

async fn pages(
    State(service): State<Service>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ScopeQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let (scope, _) = scoped(path, query)?;
    service
        .shared(move |lethe| {
            let listed = lethe
                .store()
                .pages(Some(&scope))
                .map_err(lethe::Error::from)?;
            let hot = lethe
                .store()
                .hot_turns(&scope)
                .map_err(lethe::Error::from)?;
            let pages: Vec<PageView> = listed.pages.iter().map(PageView::of).collect();
            Ok(Json(json!({"pages": pages, "hot_turns": hot.len()})))
        })
        .await
}

async fn recall(
    State(service): State<Service>,
    body: Result<Json<RecallIn>, JsonRejection>,
) -> ApiResult<Json<lethe::Recall>> {
    let Json(body) = body?;
    let target = body.target()?;
    service
        .shared(move |lethe| Ok(Json(lethe.recall(target, now())?)))
        .await
}

fn page_id(path: Result<Path<u64>, PathRejection>) -> ApiResult<PageId> {
    let Path(id) = path?;
    Ok(PageId(id))
}

async fn page(
    State(service): State<Service>,
    path: Result<Path<u64>, PathRejection>,
) -> ApiResult<Json<PageView>> {
    let id = page_id(path)?;
    service
        .shared(move |lethe| {
            let record = lethe.store().page(id).map_err(lethe::Error::from)?;
            Ok(Json(PageView::of(&record)))
        })
        .await
}

async fn image(
    State(service): State<Service>,
    path: Result<Path<u64>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> ApiResult<Response> {
    let id = page_id(path)?;
    let Query(query) = query?;
    let mode = match query.get("mode") {
        Some(name) => Some(name.parse::<Mode>().map_err(lethe::Error::from)?),
        None => None,
    };
    if let Some(key) = query.keys().find(|k| k.as_str() != "mode") {
        return Err(ApiError::invalid(format!(
            "unknown query parameter `{key}`; only `mode` is taken"
        )));
    }
    let png = service
        .shared(move |lethe| {
            Ok(lethe
                .page_image(id, mode)?
                .to_png()
                .map_err(lethe::Error::from)?)
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

async fn history(
    State(service): State<Service>,
    path: Result<Path<u64>, PathRejection>,
) -> ApiResult<Json<Vec<lethe::TierChange>>> {
    let id = page_id(path)?;
    service
        .shared(move |lethe| {
            // An unknown page is a 404, not an empty history.
            lethe.store().page(id).map_err(lethe::Error::from)?;
            Ok(Json(lethe.history(id)?))
        })
        .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinIn {
    pinned: bool,
}

async fn pin(
    State(service): State<Service>,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Json<PinIn>, JsonRejection>,
) -> ApiResult<Json<PageView>> {
    let id = page_id(path)?;
    let Json(body) = body?;
    service
        .shared(move |lethe| {
            lethe.pin(id, body.pinned)?;
            lethe.flush()?;
            let record = lethe.store().page(id).map_err(lethe::Error::from)?;
            Ok(Json(PageView::of(&record)))
        })
        .await
}

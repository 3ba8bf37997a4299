//! The REST API end to end on loopback: every endpoint, its errors, the token, the body limit,
//! and concurrent appends that lose nothing and keep each scope's order.

mod common;

use common::turns::{all_turn_texts, seq_of};
use common::{agent, get, json, post, turn, Server};
use lethe_serve::ServeOptions;
use serde_json::{json, Value};

/// Appends `n` turns to `scope` one request at a time, then pages them out.
fn fill(server: &Server, scope: &str, n: usize) {
    let a = agent();
    for i in 0..n {
        let (status, body) = post(
            &a,
            &server.url(&format!("/v1/scopes/{scope}/turns")),
            json!({"turns": [turn(0, i)]}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["turns"],
            json!([i, i + 1]),
            "turn indices of append {i}"
        );
    }
    let (status, body) = post(&a, &server.url("/v1/maintain"), json!({}));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn endpoints_answer_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ServeOptions::default());
    let a = agent();

    let (status, health) = get(&a, &server.url("/v1/health"));
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], Value::Null);

    fill(&server, "demo", 40);
    let (_, listed) = get(&a, &server.url("/v1/scopes/demo/pages"));
    let pages = listed["pages"].as_array().unwrap();
    assert!(
        pages.len() >= 2,
        "40 turns of ~300 characters make pages: {listed}"
    );
    assert_eq!(listed["hot_turns"], 2);
    let first = &pages[0];
    let id = first["id"].as_u64().unwrap();
    assert_eq!(first["turns"][0], 0);

    // The page's metadata, its PNG at its tier and at tiny, and its history.
    let (status, page) = get(&a, &server.url(&format!("/v1/pages/{id}")));
    assert_eq!(status, 200);
    assert_eq!(page["scope"]["session"], "demo");
    let mut png = a
        .get(&server.url(page["image_url"].as_str().unwrap()))
        .call()
        .unwrap();
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    let bytes = png.body_mut().read_to_vec().unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (status, history) = get(&a, &server.url(&format!("/v1/pages/{id}/history")));
    assert_eq!(status, 200);
    assert!(
        !history.as_array().unwrap().is_empty(),
        "page-out is logged: {history}"
    );

    // A budgeted context: the hot turns as text, pages with image URLs and costs.
    let (status, context) = get(&a, &server.url("/v1/scopes/demo/context?budget=100000"));
    assert_eq!(status, 200, "{context}");
    assert_eq!(context["turns"].as_array().unwrap().len(), 2);
    let shown = context["pages"].as_array().unwrap();
    assert_eq!(shown.len(), pages.len());
    let positions: u64 = shown.iter().map(|p| p["positions"].as_u64().unwrap()).sum();
    assert_eq!(
        context["usage"]["decoder_positions"].as_u64().unwrap(),
        positions
    );
    for p in shown {
        let url = server.url(p["image_url"].as_str().unwrap());
        assert_eq!(a.get(&url).call().unwrap().status(), 200, "{url}");
    }
    // A tight budget drops pages rather than exceed it.
    let text_tokens = context["usage"]["text_tokens"].as_u64().unwrap();
    let tight = text_tokens + positions / 2;
    let (_, small) = get(
        &a,
        &server.url(&format!("/v1/scopes/demo/context?budget={tight}")),
    );
    let used = small["usage"]["text_tokens"].as_u64().unwrap()
        + small["usage"]["decoder_positions"].as_u64().unwrap();
    assert!(used <= tight, "{used} > budget {tight}");

    // The same history for a hosted model: images in its tokens and a ready request body.
    let (status, gemini) = get(
        &a,
        &server.url("/v1/scopes/demo/context?budget=100000&provider=gemini"),
    );
    assert_eq!(status, 200, "{gemini}");
    let images = gemini["images"].as_array().unwrap().len();
    assert!(images >= 1);
    let parts = gemini["request"]["contents"][0]["parts"]
        .as_array()
        .unwrap();
    assert_eq!(
        parts
            .iter()
            .filter(|p| p.get("inline_data").is_some())
            .count(),
        images
    );
    assert!(gemini["total_tokens"].as_u64().unwrap() <= 100_000);
    let (status, unknown) = get(
        &a,
        &server.url("/v1/scopes/demo/context?budget=100&provider=acme"),
    );
    assert_eq!(status, 400, "{unknown}");

    // Recall by page and by turn range (no model: the retained text).
    let (status, recalled) = post(&a, &server.url("/v1/recall"), json!({"page": id}));
    assert_eq!(status, 200, "{recalled}");
    let text = recalled["pages"][0]["stored_text"].as_str().unwrap();
    assert!(text.contains("client 0 message 0:"), "{text}");
    let (status, by_turns) = post(
        &a,
        &server.url("/v1/recall"),
        json!({"scope": "demo", "start": 0, "end": 1}),
    );
    assert_eq!(status, 200);
    assert_eq!(by_turns["pages"][0]["id"], id);

    // Pin, then stats.
    let pinned = json(
        a.put(&server.url(&format!("/v1/pages/{id}/pin")))
            .send_json(json!({"pinned": true})),
    );
    assert_eq!(pinned.0, 200);
    assert_eq!(pinned.1["pinned"], true);
    let (status, stats) = get(&a, &server.url("/v1/stats"));
    assert_eq!(status, 200);
    assert_eq!(
        stats["store"]["pages"].as_u64().unwrap(),
        pages.len() as u64,
        "{stats}"
    );

    let (status, openapi) = get(&a, &server.url("/v1/openapi.json"));
    assert_eq!(status, 200);
    // Every route the server has is documented.
    for path in [
        "/v1/health",
        "/v1/openapi.json",
        "/v1/stats",
        "/v1/maintain",
        "/v1/scopes/{scope}/turns",
        "/v1/scopes/{scope}/context",
        "/v1/scopes/{scope}/pages",
        "/v1/recall",
        "/v1/pages/{id}",
        "/v1/pages/{id}/image",
        "/v1/pages/{id}/history",
        "/v1/pages/{id}/pin",
        "/mcp",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "openapi lacks {path}");
    }
}

fn error_of(response: (u16, Value)) -> (u16, String, String) {
    let (status, body) = response;
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn errors_are_json_with_a_stable_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        ServeOptions {
            body_limit: 64 * 1024,
            ..ServeOptions::default()
        },
    );
    let a = agent();
    let turns = |scope: &str| server.url(&format!("/v1/scopes/{scope}/turns"));

    let (s, code, msg) = error_of(get(&a, &server.url("/v1/pages/999")));
    assert_eq!((s, code.as_str()), (404, "not_found"), "{msg}");
    assert!(msg.contains("999"), "{msg}");
    let (s, code, _) = error_of(get(&a, &server.url("/v1/nothing-here")));
    assert_eq!((s, code.as_str()), (404, "not_found"));
    let (s, code, _) = error_of(json(a.delete(&server.url("/v1/stats")).call()));
    assert_eq!((s, code.as_str()), (405, "method_not_allowed"));
    let (s, code, msg) = error_of(post(
        &a,
        &turns("no%20spaces"),
        json!({"turns": [turn(0, 0)]}),
    ));
    assert_eq!((s, code.as_str()), (400, "invalid"));
    assert!(msg.contains("no spaces"), "{msg}");
    let long = "x".repeat(129);
    let (s, _, _) = error_of(post(&a, &turns(&long), json!({"turns": [turn(0, 0)]})));
    assert_eq!(s, 400);
    let (s, _, msg) = error_of(post(&a, &turns("ok"), json!({"turns": []})));
    assert_eq!(s, 400, "{msg}");
    let (s, _, msg) = error_of(post(&a, &turns("ok"), json!({"turns": [{"speaker": "a"}]})));
    assert_eq!(s, 400);
    assert!(msg.contains("text"), "names the missing field: {msg}");
    let (s, _, msg) = error_of(get(&a, &server.url("/v1/scopes/ok/context")));
    assert_eq!(s, 400);
    assert!(msg.contains("budget"), "{msg}");
    let (s, _, _) = error_of(get(&a, &server.url("/v1/pages/abc")));
    assert_eq!(s, 400);
    let (s, _, _) = error_of(post(
        &a,
        &server.url("/v1/recall"),
        json!({"page": 1, "scope": "x"}),
    ));
    assert_eq!(s, 400);
    let (s, _, _) = error_of(get(&a, &server.url("/v1/pages/0/image?mode=huge")));
    assert_eq!(s, 400);

    // Over the body limit: 413, for REST and MCP alike; nothing was stored.
    let big = json!({"turns": [{"speaker": "a", "text": "x".repeat(100 * 1024)}]});
    let (s, code, _) = error_of(post(&a, &turns("ok"), big.clone()));
    assert_eq!((s, code.as_str()), (413, "too_large"));
    let mcp = a
        .post(&server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .send_json(big)
        .unwrap();
    assert_eq!(mcp.status(), 413);
    let (status, listed) = get(&a, &server.url("/v1/scopes/ok/pages"));
    assert_eq!(status, 200);
    assert_eq!(
        listed["hot_turns"], 0,
        "a refused append stores nothing: {listed}"
    );
}

#[test]
fn a_token_guards_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        ServeOptions {
            token: Some("s3cret-token".into()),
            ..ServeOptions::default()
        },
    );
    let a = agent();
    for path in ["/v1/health", "/v1/stats", "/v1/scopes/x/pages", "/mcp"] {
        let response = a.get(&server.url(path)).call().unwrap();
        assert_eq!(response.status(), 401, "{path} without the token");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let wrong = a
            .get(&server.url(path))
            .header("authorization", "Bearer s3cret-tokex")
            .call()
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
    }
    let (status, _) = json(
        a.get(&server.url("/v1/health"))
            .header("authorization", "Bearer s3cret-token")
            .call(),
    );
    assert_eq!(status, 200);
}

#[test]
fn options_refuse_an_open_address_without_a_token() {
    let open = ServeOptions {
        addr: "0.0.0.0:8750".parse().unwrap(),
        ..ServeOptions::default()
    };
    let err = open.check().unwrap_err().to_string();
    assert!(
        err.contains("0.0.0.0:8750") && err.contains("token"),
        "{err}"
    );
    let guarded = ServeOptions {
        token: Some("t".into()),
        ..open
    };
    guarded.check().unwrap();
    assert!(
        ServeOptions::default().check().is_ok(),
        "loopback needs no token"
    );
}

#[test]
fn concurrent_appends_lose_nothing_and_keep_order() {
    // 8 clients x 40 appends, half to one shared scope and half to their own, with context
    // calls in between; every acknowledged turn is there once, each client's in its order.
    let (clients, appends) = (8usize, 40usize);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ServeOptions::default());
    std::thread::scope(|s| {
        for c in 0..clients {
            let server = &server;
            s.spawn(move || {
                let a = agent();
                for i in 0..appends {
                    let scope = if i % 2 == 0 {
                        "shared".to_string()
                    } else {
                        format!("own-{c}")
                    };
                    let (status, body) = post(
                        &a,
                        &server.url(&format!("/v1/scopes/{scope}/turns")),
                        json!({"turns": [turn(c, i)]}),
                    );
                    assert_eq!(status, 200, "{body}");
                    if i % 10 == 9 {
                        let (status, _) = get(
                            &a,
                            &server.url(&format!("/v1/scopes/{scope}/context?budget=1000000")),
                        );
                        assert_eq!(status, 200);
                    }
                }
            });
        }
    });
    let a = agent();
    post(&a, &server.url("/v1/maintain"), json!({}));
    drop(server);
    // Reopen the store and read every turn back, paged out or hot.
    let lethe = lethe::Lethe::builder(dir.path())
        .reader(lethe::Reader::None)
        .build()
        .unwrap();
    let shared = all_turn_texts(&lethe, "shared");
    assert_eq!(shared.len(), clients * appends / 2);
    for c in 0..clients {
        let mine: Vec<usize> = shared.iter().filter_map(|t| seq_of(t, c)).collect();
        let want: Vec<usize> = (0..appends).step_by(2).collect();
        assert_eq!(mine, want, "client {c}'s turns in the shared scope");
        let own: Vec<usize> = all_turn_texts(&lethe, &format!("own-{c}"))
            .iter()
            .filter_map(|t| seq_of(t, c))
            .collect();
        assert_eq!(own, (1..appends).step_by(2).collect::<Vec<_>>());
    }
}

//! A real MCP client exchange over streamable HTTP at `/mcp`: initialize, tools/list, and every
//! tool called, with the context tool handing old pages back as PNG image content.

mod common;

use common::{agent, turn, Server};
use lethe_serve::ServeOptions;
use serde_json::{json, Value};

struct Client {
    agent: ureq::Agent,
    url: String,
    next_id: u64,
}

impl Client {
    fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let message =
            json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        let mut response = self
            .agent
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .send_json(message)
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        let reply: Value = response.body_mut().read_json().unwrap();
        assert_eq!(reply["id"], self.next_id, "{reply}");
        reply
    }

    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let reply = self.send("tools/call", json!({"name": tool, "arguments": arguments}));
        reply["result"].clone()
    }
}

fn texts(result: &Value) -> String {
    result["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn an_mcp_client_uses_every_tool_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ServeOptions::default());
    let mut client = Client {
        agent: agent(),
        url: server.url("/mcp"),
        next_id: 0,
    };
    let init = client.send(
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "lethe-test", "version": "1"}}),
    );
    assert_eq!(init["result"]["serverInfo"]["name"], "lethe");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );

    let listed = client.send("tools/list", json!({}));
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["remember", "context", "recall", "stats", "pin"]);

    // Remember 40 turns in batches of 8, then page them out through the REST API.
    for batch in 0..5 {
        let turns: Vec<Value> = (0..8).map(|i| turn(0, batch * 8 + i)).collect();
        let result = client.call("remember", json!({"scope": "chat", "turns": turns}));
        assert_eq!(result["isError"], false, "{result}");
        let start = batch * 8;
        assert!(
            texts(&result).contains(&format!("turns {start}..{}", start + 8)),
            "{result}"
        );
    }
    common::post(&agent(), &server.url("/v1/maintain"), json!({}));

    // Context: old pages as PNG images, the recent turns as text.
    let context = client.call("context", json!({"scope": "chat", "budget": 100000}));
    assert_eq!(context["isError"], false, "{context}");
    let content = context["content"].as_array().unwrap();
    let images: Vec<&Value> = content.iter().filter(|c| c["type"] == "image").collect();
    assert!(
        images.len() >= 2,
        "pages come back as images: {}",
        content.len()
    );
    for image in &images {
        assert_eq!(image["mimeType"], "image/png");
        assert!(
            image["data"].as_str().unwrap().starts_with("iVBORw0KGgo"),
            "base64 PNG"
        );
    }
    let last = content.last().unwrap()["text"].as_str().unwrap();
    assert!(
        last.starts_with("Recent turns:") && last.contains("message 39:"),
        "{last}"
    );

    // For a hosted model: pages stacked into images costed in its tokens.
    let sized = client.call(
        "context",
        json!({"scope": "chat", "budget": 100000, "provider": "openai"}),
    );
    assert_eq!(sized["isError"], false, "{sized}");
    let blocks = sized["content"].as_array().unwrap();
    assert!(blocks.iter().any(|c| c["type"] == "image"));
    let cost = blocks.last().unwrap()["text"].as_str().unwrap();
    assert!(cost.contains("openai image tokens"), "{cost}");

    let recall = client.call("recall", json!({"page": 0}));
    assert!(texts(&recall).contains("client 0 message 0:"), "{recall}");
    let by_turns = client.call("recall", json!({"scope": "chat", "start": 0, "end": 2}));
    assert!(texts(&by_turns).starts_with("Page 0"), "{by_turns}");

    let pin = client.call("pin", json!({"page": 0, "pinned": true}));
    assert_eq!(texts(&pin), "Page 0 pinned.");
    let stats = client.call("stats", json!({}));
    let report: Value = serde_json::from_str(&texts(&stats)).unwrap();
    assert!(report["store"]["pages"].as_u64().unwrap() >= 2, "{report}");

    // Errors the model can read and correct come back as tool errors.
    let bad = client.call(
        "remember",
        json!({"scope": "not ok!", "turns": [turn(0, 0)]}),
    );
    assert_eq!(bad["isError"], true);
    assert!(texts(&bad).contains("not ok!"), "{bad}");
    let missing = client.call("recall", json!({"page": 999}));
    assert_eq!(missing["isError"], true);
    assert!(texts(&missing).starts_with("not_found"), "{missing}");
    // An unknown tool is a protocol error.
    let unknown = client.send("tools/call", json!({"name": "forget", "arguments": {}}));
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("forget"),
        "{unknown}"
    );
}

//! `memctl model pull` against a Hub lookalike on loopback, and `memctl model list`.
//!
//! The server answers the way the Hugging Face Hub's file API does: repository info at
//! `/api/models/{repo}/revision/{rev}`, files at `/{repo}/resolve/{rev}/{file}` with
//! `x-repo-commit` and `etag` headers and range requests, large files redirected to a content
//! host with their sha256 as `x-linked-etag`, 404 with `x-error-code` for what does not exist, 401
//! for a gated repository without the token. It serves the tiny fixture checkpoint, cuts the first
//! transfer of the weights half-way, and can serve a file whose bytes do not match its sha256.
//! Nothing here leaves the machine.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use support::{fixtures, memctl, ocr_tiny_card};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_test_token";

struct File {
    name: String,
    bytes: Vec<u8>,
    /// Stored in large-file storage: redirected, with its sha256 as `x-linked-etag`.
    lfs: bool,
    /// The sha256 the server claims (wrong on purpose for the corrupt repository).
    claimed_sha: String,
}

struct Hub {
    port: u16,
    /// repo id -> its files.
    repos: Vec<(String, Vec<File>)>,
    /// Files whose next full transfer is cut half-way.
    cut_once: Mutex<HashSet<String>>,
    /// Every request: `METHOD path range`.
    log: Mutex<Vec<String>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file(name: &str, bytes: Vec<u8>, lfs: bool) -> File {
    File {
        name: name.to_string(),
        claimed_sha: sha256_hex(&bytes),
        bytes,
        lfs,
    }
}

impl Hub {
    fn repo(&self, id: &str) -> Option<&[File]> {
        self.repos
            .iter()
            .find(|(r, _)| r == id)
            .map(|(_, f)| f.as_slice())
    }

    fn by_sha(&self, sha: &str) -> Option<&File> {
        self.repos
            .iter()
            .flat_map(|(_, files)| files)
            .find(|f| f.claimed_sha == sha)
    }
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

fn not_found(s: &mut TcpStream, code: &str) {
    let body = format!("{{\"error\":\"{code}\"}}");
    respond(
        s,
        "404 Not Found",
        &[("x-error-code".into(), code.into())],
        body.as_bytes(),
    );
}

/// Serves `bytes` for a `Range: bytes=a-` (or `a-b`) request, cutting it half-way when asked.
fn serve_range(
    s: &mut TcpStream,
    f: &File,
    range: Option<&str>,
    cut: bool,
    extra: &[(String, String)],
) {
    let size = f.bytes.len();
    let (start, end) = match range.and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().map(|b: usize| b + 1).unwrap_or(size);
            (a.min(size), b.min(size))
        }
        None => (0, size),
    };
    let mut headers = extra.to_vec();
    headers.push((
        "Content-Range".into(),
        format!("bytes {start}-{}/{size}", end.saturating_sub(1)),
    ));
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    let body = &f.bytes[start..end];
    if cut {
        // Promise the whole body, send half, hang up.
        let mut head = "HTTP/1.1 206 Partial Content\r\nConnection: close\r\n".to_string();
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body[..body.len() / 2]);
        let _ = s.flush();
        let _ = s.shutdown(std::net::Shutdown::Both);
        return;
    }
    respond(s, "206 Partial Content", &headers, body);
}

fn handle(hub: &Hub, mut s: TcpStream) {
    let mut reader = BufReader::new(s.try_clone().expect("clone stream"));
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut range = None;
    let mut auth = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    hub.log.lock().unwrap().push(format!(
        "{method} {path} {}",
        range.as_deref().unwrap_or("-")
    ));
    let gated_ok =
        |repo: &str| !repo.contains("gated") || auth.as_deref() == Some(&format!("Bearer {TOKEN}"));

    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, rev)) = rest.split_once("/revision/") else {
            return not_found(&mut s, "RepoNotFound");
        };
        match hub.repo(repo) {
            Some(_) if !gated_ok(repo) => respond(&mut s, "401 Unauthorized", &[], b"{}"),
            Some(files) if rev == "main" => {
                let siblings: Vec<_> = files
                    .iter()
                    .map(|f| serde_json::json!({"rfilename": f.name}))
                    .collect();
                let body = serde_json::json!({"id": repo, "sha": COMMIT, "siblings": siblings});
                respond(
                    &mut s,
                    "200 OK",
                    &[("Content-Type".into(), "application/json".into())],
                    body.to_string().as_bytes(),
                );
            }
            Some(_) => not_found(&mut s, "RevisionNotFound"),
            None => not_found(&mut s, "RepoNotFound"),
        }
        return;
    }
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let Some(f) = hub.by_sha(sha) else {
            return not_found(&mut s, "EntryNotFound");
        };
        let full = range
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=0-") && r != "bytes=0-0");
        let cut = full && hub.cut_once.lock().unwrap().remove(&f.name);
        return serve_range(&mut s, f, range.as_deref(), cut, &[]);
    }
    // /{org}/{name}/resolve/{rev}/{file}
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return not_found(&mut s, "EntryNotFound");
    };
    let Some(files) = hub.repo(repo) else {
        return not_found(&mut s, "RepoNotFound");
    };
    if !gated_ok(repo) {
        return respond(&mut s, "401 Unauthorized", &[], b"{}");
    }
    let name = rest.split_once('/').map_or("", |(_, n)| n);
    let Some(f) = files.iter().find(|f| f.name == name) else {
        return not_found(&mut s, "EntryNotFound");
    };
    let git_etag = format!("\"{}\"", &sha256_hex(name.as_bytes())[..40]);
    let mut headers = vec![
        ("x-repo-commit".to_string(), COMMIT.to_string()),
        ("etag".to_string(), git_etag),
    ];
    if f.lfs {
        headers.push(("x-linked-etag".into(), format!("\"{}\"", f.claimed_sha)));
        headers.push(("x-linked-size".into(), f.bytes.len().to_string()));
        headers.push((
            "Location".into(),
            format!("http://127.0.0.1:{}/cdn/{}", hub.port, f.claimed_sha),
        ));
        return respond(&mut s, "302 Found", &headers, b"");
    }
    serve_range(&mut s, f, range.as_deref(), false, &headers);
}

/// Starts the Hub lookalike; it serves until the test process ends.
fn start_hub() -> Arc<Hub> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().unwrap().port();
    let fx = fixtures();
    let read = |p: &str| std::fs::read(fx.join(p)).expect("fixture");
    let fixture_files = || {
        vec![
            file("config.json", read("tiny/config.json"), false),
            file("model.safetensors", read("tiny/model.safetensors"), true),
            file("tokenizer.json", read("tokenizer/tokenizer.json"), true),
            file("README.md", b"# tiny fixture\n".to_vec(), false),
        ]
    };
    let mut bad = fixture_files();
    bad[1].claimed_sha = sha256_hex(b"something else");
    let hub = Arc::new(Hub {
        port,
        repos: vec![
            ("lethe-test/tiny-ocr".into(), fixture_files()),
            ("lethe-test/corrupt".into(), bad),
            ("lethe-test/gated".into(), fixture_files()),
        ],
        cut_once: Mutex::new(HashSet::from(["model.safetensors".to_string()])),
        log: Mutex::new(Vec::new()),
    });
    let served = Arc::clone(&hub);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let hub = Arc::clone(&served);
            std::thread::spawn(move || handle(&hub, stream));
        }
    });
    hub
}

/// A Hub lookalike and an empty place for `HF_HOME` and the cache.
struct Setup {
    hub: Arc<Hub>,
    _tmp: tempfile::TempDir,
    home: std::path::PathBuf,
    cache: std::path::PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    Setup {
        hub: start_hub(),
        home: tmp.path().join("hf-home"),
        cache: tmp.path().join("cache"),
        _tmp: tmp,
    }
}

impl Setup {
    /// `memctl model pull ARGS --dir CACHE` against the lookalike.
    fn pull(&self, args: &[&str]) -> std::process::Output {
        memctl()
            .args(["model", "pull"])
            .args(args)
            .arg("--dir")
            .arg(&self.cache)
            .env("HF_ENDPOINT", format!("http://127.0.0.1:{}", self.hub.port))
            .env("HF_HOME", &self.home)
            .env_remove("HF_TOKEN")
            .output()
            .expect("run memctl")
    }
}

#[test]
fn pull_fetches_resumes_verifies_and_the_folder_reads_a_page() {
    let setup = setup();
    let (hub, cache) = (&setup.hub, &setup.cache);

    let out = setup.pull(&["lethe-test/tiny-ocr", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pull failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["commit"], COMMIT);
    assert_eq!(v["skipped"], serde_json::json!(["README.md"]));
    let folder = Path::new(v["folder"].as_str().unwrap()).to_path_buf();
    assert!(folder.starts_with(cache), "{}", folder.display());
    let fx = fixtures();
    for (name, fixture) in [
        ("config.json", "tiny/config.json"),
        ("model.safetensors", "tiny/model.safetensors"),
        ("tokenizer.json", "tokenizer/tokenizer.json"),
    ] {
        assert_eq!(
            std::fs::read(folder.join(name)).unwrap(),
            std::fs::read(fx.join(fixture)).unwrap(),
            "{name}"
        );
        let entry = v["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap();
        assert_eq!(entry["cached"], false);
        // Large files are checked against the Hub's sha256; small ones have none to check.
        let lfs = name != "config.json";
        assert_eq!(entry["sha256"].is_string(), lfs, "{name}");
    }
    // The cut transfer of the weights resumed from where it stopped, not from byte 0.
    let log = hub.log.lock().unwrap().clone();
    let weights_size = std::fs::metadata(fx.join("tiny/model.safetensors"))
        .unwrap()
        .len();
    let resumed = log.iter().any(|l| {
        l.starts_with("GET /cdn/")
            && l.split("bytes=")
                .nth(1)
                .and_then(|r| r.trim_end_matches('-').parse::<u64>().ok())
                .is_some_and(|start| start > 0 && start < weights_size)
    });
    assert!(resumed, "no resumed range request in {log:#?}");

    // The pulled folder is a model folder: it reads a page as the fixture does.
    let ocr = |model: &Path| {
        let out = ocr_tiny_card(model);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["text"].as_str().unwrap().to_string()
    };
    assert_eq!(ocr(&folder), ocr(&fx.join("tiny")));

    // A second pull downloads nothing.
    let before = hub.log.lock().unwrap().len();
    let out = setup.pull(&["lethe-test/tiny-ocr", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["cached"] == true));
    let after = hub.log.lock().unwrap()[before..].to_vec();
    assert!(
        after.iter().all(|l| l.starts_with("GET /api/")),
        "only the repository info is asked for again: {after:?}"
    );

    // `model list` finds it.
    let out = memctl()
        .args(["model", "list", "--json", "--dir"])
        .arg(cache)
        .output()
        .unwrap();
    let known: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = known
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["embedded", "pulled"]);
    assert_eq!(known[1]["model_arg"], folder.to_str().unwrap());
    assert_eq!(known[1]["missing"], serde_json::json!([]));

    // A folder given is described too, with what `--model` would miss.
    let out = memctl()
        .args(["model", "list", "--json", "--dir"])
        .arg(cache)
        .arg(fx.join("tiny"))
        .output()
        .unwrap();
    let known: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(known[2]["kind"], "folder");
    assert_eq!(known[2]["missing"], serde_json::json!(["tokenizer.json"]));
    assert!(known[2]["weight_bytes"].as_u64().unwrap() > 1_000_000);
    let out = memctl()
        .args(["model", "list", "/no/such/folder"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/folder"));
}

#[test]
fn pull_errors_name_what_and_where() {
    let setup = setup();
    let (home, cache) = (&setup.home, &setup.cache);

    // A repository the Hub does not have.
    let out = setup.pull(&["lethe-test/nothing-here"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lethe-test/nothing-here") && stderr.contains("404"),
        "{stderr}"
    );

    // Bytes that do not match the Hub's sha256 are refused and deleted.
    let out = setup.pull(&["lethe-test/corrupt"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("sha256"),
        "{stderr}"
    );
    let blobs = cache.join("models--lethe-test--corrupt/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !left
            .iter()
            .any(|n| n.to_string_lossy() == sha256_hex(b"something else")),
        "the bad file was deleted: {left:?}"
    );

    // A gated repository needs the token file; with it, the pull goes through.
    let out = setup.pull(&["lethe-test/gated"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("token"),
        "{stderr}"
    );
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(home.join("token"), TOKEN).unwrap();
    let out = setup.pull(&["lethe-test/gated"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("--model "), "{stdout}");
}

//! `memctl render` end to end: files, JSON summary, exit codes.

mod support;
use std::path::Path;

use support::run as memctl;

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

const DIALOGUE: &str = "\
=== Session 1 · 2026-03-14 ===
User: The deploy failed with exit code 137 on host db-02.
Assistant: Exit 137 is SIGKILL, usually the OOM killer. Check `dmesg | tail` and the cgroup limit.
User: 内存限制是 512 MiB。
Assistant: Raise it to 1 GiB in deploy/values.yaml and retry.
";

#[test]
fn renders_pages_and_prints_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.txt");
    std::fs::write(&input, DIALOGUE.repeat(40)).unwrap();
    let out = dir.path().join("pages");
    let o = memctl(&[
        "render",
        path(&input),
        "--mode",
        "tiny",
        "--out",
        path(&out),
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "chars",
            "files",
            "height",
            "missing_chars",
            "missing_glyphs",
            "mode",
            "pages",
            "width"
        ]
    );
    assert_eq!(v["mode"], "tiny");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(512), Some(512))
    );
    assert_eq!(v["missing_glyphs"], 0);
    let pages = v["pages"].as_u64().unwrap();
    assert!(pages >= 2, "{pages}");
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len() as u64, pages);
    assert!(files[0].as_str().unwrap().ends_with("page-0001.png"));
    assert!(v["chars"].as_u64().unwrap() > 8000);
    for f in files {
        let bytes = std::fs::read(f.as_str().unwrap()).unwrap();
        let img = lethe_render::PageImage::from_png(&bytes).unwrap();
        assert_eq!((img.width, img.height, img.channels), (512, 512, 1));
    }
    // Same input, same bytes.
    let out2 = dir.path().join("again");
    let o = memctl(&[
        "render",
        path(&input),
        "--mode",
        "tiny",
        "--out",
        path(&out2),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        std::fs::read(out.join("page-0002.png")).unwrap(),
        std::fs::read(out2.join("page-0002.png")).unwrap()
    );
}

#[test]
fn gundam_and_profile_and_format_override() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.jsonl");
    let line = r#"{"role":"assistant","content":"Long answer with many words to fill the page. "}"#;
    let mut text = String::new();
    for _ in 0..10 {
        text.push_str(&line.replace("fill the page. ", &"fill the page. ".repeat(60)));
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let profile = dir.path().join("p.toml");
    std::fs::write(&profile, "gundam = true\ngundam_max_pages = 2\n").unwrap();
    let out = dir.path().join("g");
    let o = memctl(&[
        "render",
        path(&input),
        "--mode",
        "gundam",
        "--out",
        path(&out),
        "--profile",
        path(&profile),
        "--format",
        "jsonl",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // A two-page stack has aspect 1:2, which the reference tiles 2x4 at 640 px.
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(1280), Some(2560))
    );
}

#[test]
fn bad_inputs_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let o = memctl(&[
        "render",
        path(&empty),
        "--mode",
        "base",
        "--out",
        path(&out),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("empty") && err.contains("empty.txt"), "{err}");

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, b"User: ok\nAssistant: \xFF\xFE\n").unwrap();
    let o = memctl(&["render", path(&bad), "--mode", "base", "--out", path(&out)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("byte offset 20"), "{err}");
    let o = memctl(&[
        "render",
        path(&bad),
        "--mode",
        "base",
        "--out",
        path(&out),
        "--lossy",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let json = dir.path().join("bad.jsonl");
    std::fs::write(&json, "{\"role\":\"user\",\"content\":\"a\"}\n{oops}\n").unwrap();
    let o = memctl(&["render", path(&json), "--mode", "base", "--out", path(&out)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 2"));

    let o = memctl(&[
        "render",
        path(&empty),
        "--mode",
        "huge",
        "--out",
        path(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn missing_glyphs_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("glyphs.txt");
    // Emoji are covered (Noto Emoji); an Egyptian hieroglyph is not.
    std::fs::write(&input, "User: launch 🚀 \u{13000} \u{13000}\n").unwrap();
    let o = memctl(&[
        "render",
        path(&input),
        "--mode",
        "small",
        "--out",
        path(&dir.path().join("o")),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["missing_glyphs"], 2);
    assert_eq!(v["missing_chars"], serde_json::json!(["U+13000"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning"));
}

#[test]
fn text_flag_writes_each_page_text_beside_its_png() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.txt");
    std::fs::write(&input, DIALOGUE.repeat(30)).unwrap();
    let out = dir.path().join("pages");
    let o = memctl(&[
        "render",
        path(&input),
        "--mode",
        "small",
        "--out",
        path(&out),
        "--text",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut pngs = 0;
    let mut all_text = String::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "png") {
            pngs += 1;
            let text = std::fs::read_to_string(p.with_extension("txt")).expect("text beside png");
            assert!(!text.is_empty());
            all_text.push_str(&text);
        }
    }
    assert!(pngs >= 2, "{pngs} pages");
    assert_eq!(
        all_text.matches("db-02").count(),
        30,
        "every turn's text is on exactly one page"
    );
}

#[test]
fn boxes_flag_writes_where_each_character_landed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.txt");
    std::fs::write(&input, DIALOGUE.repeat(20)).unwrap();
    let out = dir.path().join("pages");
    let o = memctl(&[
        "render",
        path(&input),
        "--mode",
        "tiny",
        "--out",
        path(&out),
        "--text",
        "--boxes",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(out.join("page-0001.txt")).unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("page-0001.boxes.json")).unwrap())
            .unwrap();
    assert_eq!(
        (doc["width"].as_u64(), doc["mode"].as_str()),
        (Some(512), Some("tiny"))
    );
    let lines = doc["lines"].as_u64().unwrap() as usize;
    let mut rebuilt = vec![String::new(); lines];
    for b in doc["boxes"].as_array().unwrap() {
        let line = b["line"].as_u64().unwrap() as usize;
        rebuilt[line].push_str(b["ch"].as_str().unwrap());
        let (x0, x1) = (b["x0"].as_f64().unwrap(), b["x1"].as_f64().unwrap());
        assert!((0.0..=512.0).contains(&x0) && x0 <= x1 && x1 <= 512.5);
    }
    assert_eq!(rebuilt.join("\n"), text);
}

//! `memctl compress` and the store subcommands, end to end through the binary.

mod support;
use std::path::Path;
use std::process::{Command, Output};

use support::{json, run as memctl};

/// `memctl compress` with no reader, 4 hot turns and JSON output.
fn compress(transcript: &str, store: &str) -> Output {
    memctl(&[
        "compress",
        transcript,
        "--store",
        store,
        "--hot-turns",
        "4",
        "--model",
        "none",
        "--json",
    ])
}

fn write_transcript(dir: &Path, turns: usize) -> String {
    let mut text = String::new();
    for i in 0..turns {
        let speaker = if i % 2 == 0 { "User" } else { "Assistant" };
        text.push_str(&format!(
            "{speaker}: Turn {i}. The deploy of ledgerd 1.24.{i} on port 8443 failed with OPS-41{i:02}; \
             see https://ops.example.com/runs/{i} and /var/log/ledgerd/{i}.log for the stack trace. \
             We agreed to keep the pool at 32 connections and retry at 02:{:02} UTC.\n\n",
            i % 60
        ));
    }
    let path = dir.join("chat.txt");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn compress_then_inspect_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = write_transcript(dir.path(), 60);
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();

    let report = json(&compress(&transcript, store));
    assert_eq!(report["turns"], 60);
    assert_eq!(report["report"]["tokenizer"], "deepseek-ocr");
    let tiers = report["report"]["tiers"].as_array().unwrap();
    let pages: u64 = tiers
        .iter()
        .filter(|t| t["tier"] != "hot")
        .map(|t| t["pages"].as_u64().unwrap())
        .sum();
    assert!(pages >= 2, "{report}");
    // compress compacts at the end (keeping the old files when the copy is no smaller): the
    // report's size is the one after compaction.
    let compaction = &report["compaction"];
    let (before, after) = (
        compaction["bytes_before"].as_u64().unwrap(),
        compaction["bytes_after"].as_u64().unwrap(),
    );
    assert!(after <= before, "{compaction}");
    let store_stats = &report["report"]["store"];
    assert_eq!(store_stats["engine_bytes_on_disk"].as_u64().unwrap(), after);
    assert_eq!(
        report["report"]["bytes_on_disk"].as_u64().unwrap(),
        after + store_stats["blob_bytes_on_disk"].as_u64().unwrap()
    );
    assert!(report["recall"].is_null());
    assert!(report["recall_note"]
        .as_str()
        .unwrap()
        .contains("--model none"));

    // Compressing the same transcript into the same store again is refused, not duplicated.
    let again = memctl(&["compress", &transcript, "--store", store]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--fresh"));

    // stats agrees with the compress report.
    let stats = json(&memctl(&["stats", "--store", store, "--json"]));
    assert_eq!(stats["report"]["total"], report["report"]["total"]);

    // recall of page 0 returns its stored text; history shows its tier changes.
    let recall = json(&memctl(&[
        "recall", "--page", "0", "--store", store, "--model", "none", "--json",
    ]));
    let text = recall["pages"][0]["stored_text"].as_str().unwrap();
    assert!(text.contains("Turn 0."), "{text}");
    let history = json(&memctl(&["history", "0", "--store", store, "--json"]));
    let history = history.as_array().unwrap();
    assert!(!history.is_empty());
    assert_eq!(history[0]["to"], "large");

    // compact again (recall has since recorded an access): every record kept, no growth, and the
    // pages read the same.
    let again = json(&memctl(&["compact", "--store", store, "--json"]));
    assert!(again["bytes_after"].as_u64().unwrap() <= again["bytes_before"].as_u64().unwrap());
    assert!(again["records"].as_u64().unwrap() > pages);
    let compacted = json(&memctl(&["stats", "--store", store, "--json"]));
    assert_eq!(compacted["report"]["tiers"], stats["report"]["tiers"]);

    // pin, export, import into a fresh store: the same pages come back.
    let pin = memctl(&["pin", "0", "--store", store]);
    assert!(pin.status.success());
    let export = dir.path().join("export");
    let export = export.to_str().unwrap();
    assert!(memctl(&["export", export, "--store", store])
        .status
        .success());
    let copy = dir.path().join("copy");
    let copy = copy.to_str().unwrap();
    assert!(memctl(&["import", export, "--store", copy])
        .status
        .success());
    let copied = json(&memctl(&["stats", "--store", copy, "--json"]));
    assert_eq!(copied["report"]["tiers"], stats["report"]["tiers"]);
    let pinned = json(&memctl(&[
        "recall", "--page", "0", "--store", copy, "--model", "none", "--json",
    ]));
    assert_eq!(
        pinned["pages"][0]["stored_text"],
        recall["pages"][0]["stored_text"]
    );
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let store = dir.path().join("store");
    let out = memctl(&[
        "compress",
        empty.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("empty"), "{err}");

    let missing = memctl(&[
        "compress",
        "/nonexistent/chat.txt",
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/chat.txt"));

    // --fresh refuses to delete a folder that is not a store.
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    let transcript = write_transcript(dir.path(), 4);
    let out = memctl(&[
        "compress",
        &transcript,
        "--store",
        precious.to_str().unwrap(),
        "--fresh",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(precious.join("notes.txt").is_file());

    let out = memctl(&["recall", "--page", "99", "--store", store.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

/// A store on a full disk: the write that does not fit fails with an error naming the store's
/// files and the cause, and everything the store held before stays readable once space is back.
/// The disk is a 16 MiB tmpfs, which needs the right to mount (root, as in CI); without it the
/// test says so on stderr and checks nothing here, and the store's own test with an injected
/// writer error (`memory/tests/bad_input.rs`) still runs.
#[test]
fn full_disk_fails_clearly_and_loses_nothing() {
    struct Mount(std::path::PathBuf);
    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&disk)
        .output();
    if !matches!(&mounted, Ok(o) if o.status.success()) {
        eprintln!("full-disk test not run: mounting a tmpfs needs root ({mounted:?})");
        return;
    }
    let _mount = Mount(disk.clone());
    let store = disk.join("store");
    let store = store.to_str().unwrap();
    let transcript = write_transcript(dir.path(), 60);
    let first = json(&compress(&transcript, store));
    let pages_before = stored_pages(&first["report"]);
    assert!(pages_before > 0);

    // Fill the disk.
    let mut filler = std::fs::File::create(disk.join("filler")).unwrap();
    let block = vec![0u8; 1 << 16];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);

    let second = dir.path().join("second.txt");
    std::fs::copy(&transcript, &second).unwrap();
    let out = compress(second.to_str().unwrap(), store);
    assert_eq!(out.status.code(), Some(1), "a full disk is an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(store), "the error names the store: {err}");
    assert!(!err.contains("panicked"), "{err}");

    std::fs::remove_file(disk.join("filler")).unwrap();
    let stats = json(&memctl(&["stats", "--store", store, "--json"]));
    assert_eq!(stats["report"]["corrupt_pages"], 0, "{stats}");
    let pages_after = stored_pages(&stats["report"]);
    assert!(
        pages_after >= pages_before,
        "{pages_after} < {pages_before}"
    );
    // Every page still passes its checksums: an export reads and checks them all.
    let export = dir.path().join("export");
    let out = memctl(&["export", "--store", store, export.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pages in a report's tiers (the hot tier counts turns, not pages).
fn stored_pages(report: &serde_json::Value) -> u64 {
    report["tiers"]
        .as_array()
        .expect("tiers")
        .iter()
        .filter(|t| t["tier"] != "hot")
        .map(|t| t["pages"].as_u64().expect("pages"))
        .sum()
}

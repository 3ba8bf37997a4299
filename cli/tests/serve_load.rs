//! A bounded load test of `memctl serve` on loopback: clients append one turn a request to a
//! shared scope and their own, interleaved with context and recall calls, then the store is
//! reopened and every turn counted. It prints requests/s and p50/p99 latency per kind.
//!
//! Default 8 clients x 25 appends (CI); `LETHE_LOAD=32x200` runs the size. Figures are
//! for a release build on a quiet machine only: `cargo test --release -p lethe-cli --test
//! serve_load -- --nocapture`.

mod support;
#[path = "../../serve/tests/common/turns.rs"]
mod turns;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use turns::{all_turn_texts, seq_of};

fn size() -> (usize, usize) {
    let spec = std::env::var("LETHE_LOAD").unwrap_or_else(|_| "8x25".into());
    let (c, a) = spec
        .split_once('x')
        .unwrap_or_else(|| panic!("LETHE_LOAD={spec}: expected CLIENTSxAPPENDS"));
    (c.parse().expect("clients"), a.parse().expect("appends"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[test]
fn load_loses_nothing_and_reports_latency() {
    let (clients, appends) = size();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = support::spawn_serve(dir.path(), "8", "1", Stdio::null());
    let agent = || {
        ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build(),
        )
    };
    let turn = |client: usize, seq: usize| {
        let text = format!(
            "client {client} message {seq}: the build ran in {} s. ",
            10 + seq
        )
        .repeat(3);
        json!({"turns": [{"speaker": format!("agent-{client}"), "text": text}]})
    };
    // Pages to recall from the start: a first client's worth, paged out.
    let a = agent();
    for seq in 0..80 {
        let r = a
            .post(&format!("{url}/v1/scopes/warm/turns"))
            .send_json(turn(999, seq))
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut maintained = a.post(&format!("{url}/v1/maintain")).send_empty().unwrap();
    let maintained: Value = maintained.body_mut().read_json().unwrap();
    assert!(
        maintained["pages_created"].as_u64().unwrap() >= 2,
        "{maintained}"
    );

    let started = Instant::now();
    let timings: Vec<Vec<(&'static str, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (url, agent) = (&url, &agent);
                s.spawn(move || {
                    let a = agent();
                    let mut times = Vec::new();
                    let mut timed = |kind: &'static str, f: &mut dyn FnMut() -> u16| {
                        let t = Instant::now();
                        let status = f();
                        assert_eq!(status, 200, "{kind}");
                        times.push((kind, t.elapsed().as_secs_f64() * 1e3));
                    };
                    for seq in 0..appends {
                        let scope = if seq % 2 == 0 { "shared".to_string() } else { format!("own-{c}") };
                        timed("append", &mut || {
                            a.post(&format!("{url}/v1/scopes/{scope}/turns"))
                                .send_json(turn(c, seq))
                                .unwrap()
                                .status()
                                .as_u16()
                        });
                        if seq % 5 == 4 {
                            timed("context", &mut || {
                                a.get(&format!("{url}/v1/scopes/warm/context?budget=100000"))
                                    .call()
                                    .unwrap()
                                    .status()
                                    .as_u16()
                            });
                        }
                        if seq % 10 == 9 {
                            timed("recall", &mut || {
                                a.post(&format!("{url}/v1/recall"))
                                    .send_json(json!({"scope": "warm", "start": seq % 10, "end": seq % 10 + 1}))
                                    .unwrap()
                                    .status()
                                    .as_u16()
                            });
                        }
                    }
                    times
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let all: Vec<(&str, f64)> = timings.into_iter().flatten().collect();
    println!(
        "load: {clients} clients x {appends} appends, {} requests in {wall:.2} s = {:.0} requests/s",
        all.len(),
        all.len() as f64 / wall
    );
    for kind in ["append", "context", "recall", "all"] {
        let mut ms: Vec<f64> = all
            .iter()
            .filter(|(k, _)| kind == "all" || *k == kind)
            .map(|(_, ms)| *ms)
            .collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "  {kind:8} n={:6}  p50 {:7.2} ms  p99 {:7.2} ms",
            ms.len(),
            percentile(&ms, 0.50),
            percentile(&ms, 0.99)
        );
    }
    // SIGTERM: a clean stop, then count every turn in the reopened store.
    // SAFETY: signalling our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    let lethe = lethe::Lethe::builder(dir.path())
        .reader(lethe::Reader::None)
        .build()
        .unwrap();
    let shared = all_turn_texts(&lethe, "shared");
    let mut stored = shared.len();
    for c in 0..clients {
        let mine: Vec<usize> = shared.iter().filter_map(|t| seq_of(t, c)).collect();
        assert_eq!(
            mine,
            (0..appends).step_by(2).collect::<Vec<_>>(),
            "client {c}, shared scope"
        );
        let own = all_turn_texts(&lethe, &format!("own-{c}"));
        let seqs: Vec<usize> = own.iter().filter_map(|t| seq_of(t, c)).collect();
        assert_eq!(
            seqs,
            (1..appends).step_by(2).collect::<Vec<_>>(),
            "client {c}, own scope"
        );
        stored += own.len();
    }
    println!(
        "  turns sent {}, stored {stored}, lost {}",
        clients * appends,
        clients * appends - stored
    );
    assert_eq!(stored, clients * appends);
}

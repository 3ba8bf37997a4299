//! A simulated agent conversation: on every turn the agent appends what was said, lets Lethe
//! maintain its memory, and asks for a context that fits its token budget, printing the usage.
//!
//! ```sh
//! cargo run --release --example agent_loop -- [TURNS] [BUDGET]
//! ```

use lethe::{Lethe, Scope, Turn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let turns: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(120);
    let budget: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4_000);

    let dir = tempfile::tempdir()?;
    let mut memory = Lethe::builder(dir.path()).hot_turns(6).build()?;
    let scope = Scope::session("agent-loop").with_agent("demo-agent");

    println!(
        "{:>5} {:>6} {:>6} {:>8} {:>9} {:>9} {:>8}",
        "turn", "pages", "shown", "dropped", "text tok", "positions", "ms"
    );
    for i in 0..turns {
        let turn = if i % 2 == 0 {
            Turn::new("User", user_message(i))
        } else {
            Turn::new("Assistant", assistant_message(i))
        };
        let now = i as u64 * 30;
        memory.append(&scope, &[turn], now)?;
        let done = memory.maintain(now)?;
        let context = memory.context(&scope, budget, now)?;
        if i % 10 == 9 || i + 1 == turns {
            let pages = memory.store().pages(Some(&scope))?.pages.len();
            println!(
                "{:>5} {:>6} {:>6} {:>8} {:>9} {:>9} {:>8.1}",
                i + 1,
                pages,
                context.pages.len(),
                context.dropped_pages.len(),
                context.usage.text_tokens,
                context.usage.decoder_positions,
                done.usage.millis + context.usage.millis,
            );
            assert!(context.usage.text_tokens + context.usage.decoder_positions <= budget);
        }
    }
    let report = memory.report()?;
    let hot = report
        .tiers
        .iter()
        .find(|t| t.tier == "hot")
        .map_or(0, |t| t.pages);
    println!(
        "\n{} pages and {hot} hot turns; {} text tokens held in {} decoder positions and hot text \
         ({:.2} tokens per position, {} tokenizer); {} bytes on disk",
        report.total.pages - hot,
        report.total.text_tokens,
        report.total.decoder_positions,
        report.total.ratio_positions,
        report.tokenizer,
        report.bytes_on_disk
    );
    Ok(())
}

fn user_message(i: usize) -> String {
    let topics = [
        "Can you check why the ledger service on port 8443 returns 503s after the deploy?",
        "Please draft the migration plan for table payments_v2, about 184 million rows.",
        "What did we decide about the connection pool size last week?",
        "Summarise the incident OPS-4127 for the weekly report, with the timeline.",
        "Translate this for the Shanghai team: 我们明天上午十点开会讨论迁移计划。",
    ];
    format!("{} (message {i})", topics[i / 2 % topics.len()])
}

fn assistant_message(i: usize) -> String {
    format!(
        "Turn {i}: I looked at the logs in /var/log/ledgerd/{i:04}.log. The pool of 32 connections \
         was exhausted at 02:{:02} UTC; p99 latency rose from 41 ms to 811 ms. I propose keeping \
         max_connections = 32, adding a background pool of 4, and alerting when pool_wait_ms > 250. \
         Commit 9f3c2a{:x} has the change; the runbook is at https://wiki.example.com/ops/ledgerd.",
        i % 60,
        i * 7919 % 4096
    )
}

//! Provider cost rules against the vendors' own worked examples, and provider contexts: within
//! the budget, newest pages first, older ones smaller, cropped, with honest accounting and a
//! request body in each provider's format. No test calls a provider.

use lethe::{ImageRule, Lethe, PayloadFormat, Providers, Reader, Scope, Turn};

fn rule(provider: &str, model: Option<&str>) -> ImageRule {
    Providers::builtin()
        .find(provider, model)
        .unwrap()
        .rule
        .clone()
}

#[test]
fn anthropic_matches_its_documented_examples() {
    let r = rule("anthropic", None);
    // docs.claude.com "Calculate image costs": 200x200 ~54, 1000x1000 ~1334, 1092x1092 ~1590.
    assert_eq!(r.bill(200, 200).tokens, 54);
    assert_eq!(r.bill(1000, 1000).tokens, 1334);
    assert_eq!(r.bill(1092, 1092).tokens, 1590);
    // Larger images are scaled down, aspect kept, to the long edge and to ~1,600 tokens.
    let big = r.bill(4000, 1000);
    assert!(big.width <= 1568 && big.tokens <= 1600, "{big:?}");
    let square = r.bill(3000, 3000);
    assert!(square.tokens <= 1600 && square.tokens > 1500, "{square:?}");
    assert_eq!(square.width, square.height);
}

#[test]
fn openai_tiles_match_the_documented_examples() {
    let r = rule("openai", Some("gpt-4o"));
    // platform.openai.com images guide: 1024x1024 high -> 768x768, 4 tiles, 765 tokens;
    // 2048x4096 -> 1024x2048 -> 768x1536, 6 tiles, 1105 tokens.
    let a = r.bill(1024, 1024);
    assert_eq!((a.width, a.height, a.tokens), (768, 768, 765));
    let b = r.bill(2048, 4096);
    assert_eq!((b.width, b.height, b.tokens), (768, 1536, 1105));
    let ImageRule::Tiles { low_tokens, .. } = r else {
        panic!("tiles")
    };
    assert_eq!(low_tokens, 85, "low detail is flat");
}

#[test]
fn openai_patches_match_the_documented_examples() {
    // The guide's patch examples give patch counts: 1024x1024 -> 1024; 1800x2400 -> resized to
    // 1056x1408 -> 1452 patches. Multipliers then apply per model.
    let unit = ImageRule::Patches {
        patch: 32,
        max_patches: 1536,
        multiplier: 1.0,
    };
    assert_eq!(unit.bill(1024, 1024).tokens, 1024);
    let b = unit.bill(1800, 2400);
    assert_eq!((b.width, b.height, b.tokens), (1056, 1408, 1452));
    assert_eq!(
        rule("openai", Some("gpt-4.1-mini")).bill(1024, 1024).tokens,
        1659
    ); // 1024 x 1.62
    assert_eq!(
        rule("openai", Some("gpt-4.1-nano")).bill(1024, 1024).tokens,
        2520
    ); // x 2.46
    assert_eq!(
        rule("openai", Some("o4-mini")).bill(1024, 1024).tokens,
        1762
    ); // x 1.72
}

#[test]
fn gemini_matches_its_documented_rules() {
    let r = rule("gemini", None);
    // ai.google.dev tokens guide: both sides <= 384 px: 258; larger: 258 per 768x768 tile.
    assert_eq!(r.bill(384, 384).tokens, 258);
    assert_eq!(r.bill(200, 300).tokens, 258);
    assert_eq!(r.bill(768, 768).tokens, 258);
    assert_eq!(r.bill(1536, 768).tokens, 516);
    assert_eq!(r.bill(1024, 1024).tokens, 1032);
    // Gemini 3: a fixed count per image at the default (high) media resolution.
    assert_eq!(
        rule("gemini", Some("gemini-3-pro-preview"))
            .bill(4000, 3000)
            .tokens,
        1120
    );
}

#[test]
fn the_table_is_data_that_names_its_sources() {
    let table = Providers::builtin();
    for p in &table.provider {
        assert!(p.source.starts_with("https://"), "{}: {}", p.name, p.source);
        assert_eq!(p.read.len(), 10, "{}: read date {}", p.name, p.read);
        assert!(
            p.tiers.large >= p.tiers.base
                && p.tiers.base >= p.tiers.small
                && p.tiers.small >= p.tiers.tiny
        );
    }
    let err = table.find("acme", None).unwrap_err().to_string();
    assert!(err.contains("anthropic") && err.contains("gemini"), "{err}");
    let err = table.find("openai", Some("gpt-9")).unwrap_err().to_string();
    assert!(err.contains("gpt-4o"), "{err}");
    let bad = Providers::from_toml_str("[[provider]]\nname = 'x'\n", "mine.toml").unwrap_err();
    assert!(bad.to_string().starts_with("mine.toml"), "{bad}");
}

fn memory(dir: &std::path::Path) -> (Lethe, Scope) {
    let mut memory = Lethe::builder(dir)
        .reader(Reader::None)
        .hot_turns(4)
        .build()
        .unwrap();
    let scope = Scope::session("s");
    for i in 0..120u64 {
        let text = format!(
            "Turn {i}: the deploy of ledgerd 1.24.{i} failed on port 8443 with OPS-41{i:02}. "
        )
        .repeat(3);
        memory
            .append(
                &scope,
                &[Turn::new(if i % 2 == 0 { "User" } else { "Agent" }, text)],
                i,
            )
            .unwrap();
    }
    memory.maintain(120).unwrap();
    (memory, scope)
}

#[test]
fn provider_contexts_fit_the_budget_newest_first_and_account_honestly() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, scope) = memory(dir.path());
    let table = Providers::builtin();
    let pages_total = memory.store().pages(Some(&scope)).unwrap().pages.len();
    assert!(pages_total >= 4, "{pages_total} pages");
    for name in ["anthropic", "openai", "gemini"] {
        let provider = table.find(name, None).unwrap();
        let roomy = memory
            .provider_context(&scope, 1_000_000, provider, None)
            .unwrap();
        assert_eq!(
            roomy.pages.len(),
            pages_total,
            "{name}: everything fits a roomy budget"
        );
        let hot = memory.store().hot_turns(&scope).unwrap().len();
        assert_eq!(roomy.turns.len(), hot, "{name}: every hot turn, as text");
        assert_eq!(roomy.total_tokens, roomy.image_tokens + roomy.text_tokens);
        assert_eq!(roomy.accounting.turns_included, 120, "{name}");
        assert_eq!(roomy.accounting.history_turns, 120, "{name}");
        for (n, image) in roomy.images.iter().enumerate() {
            assert_eq!(
                provider.rule.bill(image.width, image.height).tokens,
                image.tokens
            );
            let decoded = lethe::PageImage::from_png(&image.png).unwrap();
            assert_eq!((decoded.width, decoded.height), (image.width, image.height));
            assert!(
                image.height <= provider.sheet_height,
                "{name}: {}",
                image.height
            );
            let on_it: Vec<_> = roomy.pages.iter().filter(|p| p.image == n).collect();
            assert_eq!(on_it.iter().map(|p| p.id).collect::<Vec<_>>(), image.pages);
            assert_eq!(
                on_it.iter().map(|p| p.tokens).sum::<u64>(),
                image.tokens,
                "{name}"
            );
        }
        for p in &roomy.pages {
            assert!(
                p.width <= provider.tiers.large,
                "{name}: cropped, never wider than a page"
            );
        }
        let ids: Vec<_> = roomy.pages.iter().map(|p| p.id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{name}: pages oldest first"
        );

        // A budget for about half the pages: the newest are kept, the oldest dropped.
        let half = roomy.text_tokens + roomy.image_tokens / 2;
        let tight = memory
            .provider_context(&scope, half, provider, None)
            .unwrap();
        assert!(
            tight.total_tokens <= half,
            "{name}: {} > {half}",
            tight.total_tokens
        );
        assert!(
            !tight.pages.is_empty() && !tight.dropped_pages.is_empty(),
            "{name}"
        );
        let newest_kept = tight.pages.last().unwrap().id;
        assert_eq!(
            newest_kept,
            roomy.pages.last().unwrap().id,
            "{name}: newest page kept"
        );
        assert!(
            tight.dropped_pages.iter().all(|d| *d < tight.pages[0].id),
            "{name}: oldest dropped"
        );
        // Truncation to the same budget keeps fewer turns than the optical context covers
        // (or, for a provider whose images cost more than their text, says so).
        let acc = &tight.accounting;
        assert!(acc.truncation_text_tokens <= half);
        let family = if name == "openai" {
            "o200k_base"
        } else {
            "deepseek-ocr"
        };
        assert_eq!(acc.tokenizer, family, "{name}");
        assert!(acc.ratio > 0.0);
        println!(
            "{name}: budget {half}: {} pages on {} images + {} turns = {} tokens; {} turns covered; as text {} tokens (ratio {:.2}); truncation keeps {} turns",
            tight.pages.len(),
            tight.images.len(), tight.turns.len(), tight.total_tokens, acc.turns_included,
            acc.included_text_tokens, acc.ratio, acc.truncation_turns
        );
    }
}

#[test]
fn payloads_are_in_each_providers_format() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, scope) = memory(dir.path());
    let table = Providers::builtin();
    for (name, format) in [
        ("anthropic", PayloadFormat::Anthropic),
        ("openai", PayloadFormat::Openai),
        ("gemini", PayloadFormat::Gemini),
    ] {
        let provider = table.find(name, None).unwrap();
        let context = memory
            .provider_context(&scope, 1_000_000, provider, None)
            .unwrap();
        assert_eq!(context.format, format);
        let body = context.payload("What failed on port 8443?", 512);
        let text = body.to_string();
        assert!(text.contains("What failed on port 8443?") && text.contains("Recent turns:"));
        let images = match format {
            PayloadFormat::Anthropic => {
                assert_eq!(body["model"], provider.models[0].as_str());
                body["messages"][0]["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["type"] == "image")
                    .inspect(|c| assert_eq!(c["source"]["media_type"], "image/png"))
                    .count()
            }
            PayloadFormat::Openai => body["messages"][0]["content"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["type"] == "image_url")
                .inspect(|c| {
                    assert!(c["image_url"]["url"]
                        .as_str()
                        .unwrap()
                        .starts_with("data:image/png;base64,iVBOR"))
                })
                .count(),
            PayloadFormat::Gemini => body["contents"][0]["parts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p.get("inline_data").is_some())
                .count(),
        };
        assert_eq!(images, context.images.len(), "{name}");
    }
}

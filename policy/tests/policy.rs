//! Example-based tests: defaults, TOML, each rule at its boundaries, budgets.

use std::error::Error as _;

use lethe_policy::{
    AgeFrom, Clock, Curve, Level, Mode, PageState, Policy, PolicyError, Rule, Tier, EVICTED,
};

const L0: Tier = Tier::At(Mode::Large);
const L1: Tier = Tier::At(Mode::Base);
const L2: Tier = Tier::At(Mode::Small);
const L3: Tier = Tier::At(Mode::Tiny);

fn default_toml_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.toml")
}

/// The error and its sources, as `{:#}` would print them.
fn chain(e: &PolicyError) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn step_policy() -> Policy {
    Policy::builder()
        .curve(Curve::Step {
            after: vec![10, 20, 30, 40],
        })
        .floor(EVICTED)
        .build()
        .expect("valid policy")
}

fn page(id: u64, turn: u64, tier: Tier, text_tokens: u32) -> PageState {
    PageState::new(id, turn, 1_000 + turn, tier, text_tokens)
}

#[test]
fn default_toml_file_equals_default() {
    let file = Policy::from_path(default_toml_path()).expect("policies/default.toml loads");
    assert_eq!(file, Policy::default());
}

#[test]
fn default_values_are_the_documented_ones() {
    let p = Policy::default();
    let names: Vec<_> = p.ladder().levels().iter().map(|l| l.mode.name()).collect();
    assert_eq!(names, ["large", "base", "small", "tiny"]);
    let positions: Vec<_> = p.ladder().levels().iter().map(|l| l.positions).collect();
    assert_eq!(positions, [421, 273, 111, 73]);
    assert_eq!(p.clock(), Clock::Turns);
    assert_eq!(p.age_from(), AgeFrom::LastAccess);
    assert_eq!(p.floor(), L3);
    assert_eq!(p.pin_tier(), None);
    assert_eq!((p.ttl_turns(), p.ttl_seconds()), (None, None));
    assert_eq!(p.reinforcement().stability, 20.0);
    assert_eq!(p.reinforcement().growth, 2.0);
}

#[test]
fn default_retention_boundaries_match_the_documentation() {
    // default.toml says: large through age 10, base through 20, small through 37, tiny through 59.
    let p = Policy::builder().floor(EVICTED).build().expect("valid");
    let fresh = page(1, 0, L0, 500);
    let tier_at = |age| p.curve_tier(&fresh, 0, age);
    assert_eq!((tier_at(10), tier_at(11)), (L0, L1));
    assert_eq!((tier_at(20), tier_at(21)), (L1, L2));
    assert_eq!((tier_at(37), tier_at(38)), (L2, L3));
    assert_eq!((tier_at(59), tier_at(60)), (L3, Tier::Evicted));
}

#[test]
fn toml_round_trips() {
    let custom = Policy::builder()
        .ladder(vec![Level::gundam(500), Level::new(Mode::Small)])
        .clock(Clock::Seconds)
        .age_from(AgeFrom::Created)
        .curve(Curve::Step {
            after: vec![3_600, 86_400],
        })
        .reinforcement(1_800.0, 1.5)
        .floor("evicted")
        .pin_tier("gundam")
        .ttl_turns(Some(50))
        .ttl_seconds(Some(604_800))
        .drop_text(Some("small".into()))
        .recall_curve(vec![[5.0, 1.0], [25.0, 0.25]])
        .build()
        .expect("valid custom policy");
    for p in [Policy::default(), custom] {
        let text = p.to_toml().expect("serialises");
        assert_eq!(
            Policy::from_toml_str(&text).expect("reads back"),
            p,
            "{text}"
        );
    }
}

#[test]
fn missing_keys_take_default_values() {
    let p =
        Policy::from_toml_str("floor = \"small\"\n[reinforcement]\ngrowth = 3.0\n").expect("ok");
    assert_eq!(p.floor(), L2);
    assert_eq!(p.reinforcement().growth, 3.0);
    assert_eq!(p.reinforcement().stability, 20.0);
    assert_eq!(p.curve(), Policy::default().curve());
    assert_eq!(
        Policy::from_toml_str("").expect("empty is default"),
        Policy::default()
    );
}

#[test]
fn bad_toml_names_the_field() {
    let cases = [
        ("[reinforcement]\nstabilty = 3.0\n", "stabilty"),
        ("[reinforcement]\nstability = \"long\"\n", "stability"),
        ("clok = \"turns\"\n", "clok"),
        ("clock = \"weeks\"\n", "weeks"),
        ("[curve]\nkind = \"step\"\nafter = [1, 2]\n", "curve.after"),
        (
            "[curve]\nkind = \"step\"\nafter = [1, 5, 3, 9]\n",
            "curve.after[2]",
        ),
        (
            "[curve]\nkind = \"retention\"\nthresholds = [0.5, 0.6, 0.1, 0.0]\n",
            "curve.thresholds[1]",
        ),
        (
            "[curve]\nkind = \"retention\"\nthresholds = [1.5, 0.6, 0.1, 0.0]\n",
            "curve.thresholds[0]",
        ),
        ("[curve]\nkind = \"sigmoid\"\n", "sigmoid"),
        ("[reinforcement]\ngrowth = 0.5\n", "reinforcement.growth"),
        (
            "[reinforcement]\nstability = 0.0\n",
            "reinforcement.stability",
        ),
        ("floor = \"huge\"\n", "floor"),
        ("pin = \"evicted\"\n", "pin"),
        ("floor = \"base\"\npin = \"tiny\"\n", "pin"),
        ("ttl_turns = 0\n", "ttl_turns"),
        ("drop_text = \"medium\"\n", "drop_text"),
        ("ttl_seconds = -5\n", "ttl_seconds"),
        (
            "[budget]\nrecall = [[10.0, 0.9], [5.0, 0.5]]\n",
            "budget.recall[1]",
        ),
        (
            "[budget]\nrecall = [[10.0, 0.5], [20.0, 0.9]]\n",
            "budget.recall[1]",
        ),
        ("[[ladder]]\nname = \"huge\"\n", "\"huge\" is not a mode"),
        (
            "[[ladder]]\nname = \"base\"\npositions = 300\n",
            "a base page costs 273 decoder positions, got 300",
        ),
        (
            "[[ladder]]\nname = \"gundam\"\n[[ladder]]\nname = \"tiny\"\n",
            "a gundam level needs `positions`",
        ),
        (
            "[[ladder]]\nname = \"tiny\"\n[[ladder]]\nname = \"base\"\n",
            "ladder[1].name",
        ),
        (
            "[[ladder]]\nname = \"base\"\n[[ladder]]\nname = \"base\"\n",
            "ladder[1].name",
        ),
        ("ladder = []\n", "ladder"),
        ("clock = \n", "clock"),
    ];
    for (text, field) in cases {
        let err = Policy::from_toml_str(text).expect_err(text);
        let msg = chain(&err);
        assert!(
            msg.contains(field),
            "error for {text:?} should name {field:?}: {msg}"
        );
    }
}

#[test]
fn file_errors_name_the_file() {
    let missing = std::env::temp_dir().join("lethe-policy-no-such-file.toml");
    let err = Policy::from_path(&missing).expect_err("missing file");
    assert!(matches!(err, PolicyError::Read { .. }));
    assert!(
        err.to_string().contains("lethe-policy-no-such-file.toml"),
        "{err}"
    );

    let bad = std::env::temp_dir().join(format!("lethe-policy-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "floor = \"huge\"\n").expect("write temp file");
    let err = Policy::from_path(&bad).expect_err("bad floor");
    let _ = std::fs::remove_file(&bad);
    let msg = err.to_string();
    assert!(
        msg.contains("floor") && msg.contains("lethe-policy-bad-"),
        "{msg}"
    );
}

#[test]
fn step_thresholds_are_exact_at_boundaries() {
    let p = step_policy();
    let fresh = page(1, 0, L0, 500);
    let tier_at = |age| p.decide(&fresh, 0, age).expect("decides").tier;
    let expected = [
        (0, L0),
        (9, L0),
        (10, L1),
        (19, L1),
        (20, L2),
        (29, L2),
        (30, L3),
        (39, L3),
        (40, Tier::Evicted),
        (u64::MAX, Tier::Evicted),
    ];
    for (age, tier) in expected {
        assert_eq!(tier_at(age), tier, "age {age}");
    }
}

#[test]
fn seconds_clock_and_age_origin() {
    let p = Policy::builder()
        .clock(Clock::Seconds)
        .curve(Curve::Step {
            after: vec![60, 120, 180, 240],
        })
        .age_from(AgeFrom::Created)
        .build()
        .expect("valid");
    let mut pg = PageState::new(1, 0, 1_000, L0, 100);
    assert_eq!(p.decide(&pg, 1_059, 99).expect("ok").tier, L0);
    assert_eq!(p.decide(&pg, 1_060, 0).expect("ok").tier, L1);
    // Counting from creation, an access does not reset the age.
    pg.record_access(0, 1_100);
    assert_eq!(p.age(&pg, 1_130, 0), 130);
    assert_eq!(p.decide(&pg, 1_130, 0).expect("ok").tier, L2);
    // Counting from the last access, it does.
    let q = Policy::builder()
        .clock(Clock::Seconds)
        .age_from(AgeFrom::LastAccess)
        .build()
        .expect("valid");
    assert_eq!(q.age(&pg, 1_130, 0), 30);
    // A clock running backwards gives age 0, not a panic.
    assert_eq!(q.age(&pg, 0, 0), 0);
}

#[test]
fn floor_holds_against_decay() {
    let p = Policy::default();
    let mut pg = page(1, 0, L0, 500);
    for turn in [0, 10, 50, 1_000, 1_000_000] {
        let d = p.decide(&pg, 0, turn).expect("ok");
        assert!(d.tier <= L3, "turn {turn}: {:?}", d.tier);
        pg.set_tier(d.tier);
    }
    let d = p.decide(&pg, 0, 1_000_000).expect("ok");
    assert_eq!((d.tier, d.reason.rule), (L3, Rule::Floor));
    assert_eq!(d.reason.wanted, Tier::Evicted);
}

#[test]
fn ttl_evicts_at_its_boundary_even_below_the_floor() {
    let p = Policy::builder()
        .ttl_turns(Some(100))
        .build()
        .expect("valid");
    let pg = page(1, 5, L0, 500);
    assert_eq!(p.decide(&pg, 0, 104).expect("ok").tier, L3);
    let d = p.decide(&pg, 0, 105).expect("ok");
    assert_eq!((d.tier, d.reason.rule), (Tier::Evicted, Rule::TtlExpired));
    assert!(d.reason.text.contains("ttl_turns = 100"), "{}", d.reason);

    let p = Policy::builder()
        .ttl_seconds(Some(3_600))
        .build()
        .expect("valid");
    let pg = PageState::new(2, 0, 10_000, L0, 500);
    assert_eq!(p.decide(&pg, 13_599, 0).expect("ok").tier, L0);
    assert_eq!(p.decide(&pg, 13_600, 0).expect("ok").tier, Tier::Evicted);

    // Pinned pages outlive a TTL.
    let mut pinned = pg.clone();
    pinned.pinned = true;
    let d = p.decide(&pinned, 1_000_000, 0).expect("ok");
    assert_eq!((d.tier, d.reason.rule), (L0, Rule::Pinned));
}

#[test]
fn pins_stay_or_go_to_the_pin_tier() {
    let mut pg = page(1, 0, L2, 500);
    pg.pinned = true;
    let d = step_policy().decide(&pg, 0, 1_000).expect("ok");
    assert_eq!((d.tier, d.reason.rule), (L2, Rule::Pinned));
    let to_top = Policy::builder().pin_tier("large").build().expect("valid");
    let d = to_top.decide(&pg, 0, 1_000).expect("ok");
    assert_eq!((d.tier, d.reason.rule), (L0, Rule::Pinned));
    assert!(d.changed());
    // Nothing comes back from eviction.
    pg.tier = Tier::Evicted;
    let d = to_top.decide(&pg, 0, 1_000).expect("ok");
    assert_eq!(
        (d.tier, d.reason.rule),
        (Tier::Evicted, Rule::AlreadyEvicted)
    );
}

#[test]
fn text_is_dropped_at_the_drop_level_and_below_except_when_pinned() {
    assert_eq!(Policy::default().drop_text_tier(), None);
    let keep_all = step_policy();
    let drops = Policy::builder()
        .curve(Curve::Step {
            after: vec![10, 20, 30, 40],
        })
        .floor(EVICTED)
        .drop_text(Some("small".into()))
        .build()
        .expect("valid");
    assert_eq!(drops.drop_text_tier(), Some(L2));
    // Ages 0, 10, 20, 30, 40 land on large, base, small, tiny, evicted.
    for (age, tier, dropped) in [
        (0, L0, false),
        (10, L1, false),
        (20, L2, true),
        (30, L3, true),
        (40, Tier::Evicted, true),
    ] {
        let pg = page(1, 0, L0, 500);
        let d = drops.decide(&pg, 0, age).expect("ok");
        assert_eq!((d.tier, d.drop_text), (tier, dropped), "age {age}");
        assert!(!keep_all.decide(&pg, 0, age).expect("ok").drop_text);
        // A page already at small keeps being told to drop (the caller drops only once).
        let mut at_small = page(2, 0, L2, 500);
        at_small.pinned = true;
        assert!(
            !drops.decide(&at_small, 0, age).expect("ok").drop_text,
            "pinned"
        );
        at_small.pinned = false;
        assert!(drops.decide(&at_small, 0, age).expect("ok").drop_text);
    }
    let at_eviction =
        Policy::from_toml_str("floor = \"evicted\"\ndrop_text = \"evicted\"\n").expect("valid");
    assert_eq!(at_eviction.drop_text_tier(), Some(Tier::Evicted));
    assert!(
        !at_eviction
            .decide(&page(3, 0, L3, 10), 0, 5)
            .expect("ok")
            .drop_text
    );
}

#[test]
fn pages_rise_only_after_an_access() {
    let p = step_policy();
    // A page stored at `small` whose curve would say `large` (e.g. the policy changed).
    let mut pg = page(1, 100, L2, 500);
    let d = p.decide(&pg, 0, 101).expect("ok");
    assert_eq!(
        (d.tier, d.reason.rule, d.reason.wanted),
        (L2, Rule::Held, L0)
    );
    assert!(!d.changed());
    pg.record_access(150, 0);
    let d = p.decide(&pg, 0, 155).expect("ok");
    assert_eq!((d.tier, d.reason.rule), (L0, Rule::Reinforced));
    assert!(d.reason.text.contains("rises to large"), "{}", d.reason);
    pg.set_tier(d.tier);
    // The access is spent once the page moved.
    pg.tier = L2;
    let d = p.decide(&pg, 0, 155).expect("ok");
    assert_eq!(d.tier, L2);
}

#[test]
fn accesses_slow_forgetting() {
    let p = Policy::builder()
        .age_from(AgeFrom::Created)
        .floor(EVICTED)
        .build()
        .expect("valid");
    let mut pg = page(1, 0, L0, 500);
    assert_eq!(p.curve_tier(&pg, 0, 30), L2);
    for _ in 0..3 {
        pg.record_access(0, 0);
    }
    // S = 20 * 2^3 = 160; R(30) = exp(-30/160) = 0.83.
    assert_eq!(p.stability(&pg), 160.0);
    assert_eq!(p.curve_tier(&pg, 0, 30), L0);
}

#[test]
fn a_tier_off_the_ladder_is_an_error() {
    let pg = page(9, 0, Tier::At(Mode::Gundam), 500);
    let err = Policy::default()
        .decide(&pg, 0, 0)
        .expect_err("the default ladder has no gundam level");
    assert!(
        matches!(
            err,
            PolicyError::NotOnLadder {
                id: 9,
                tier: Tier::At(Mode::Gundam),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "page 9 is at tier gundam, which the policy's ladder (large, base, small, tiny) does not have"
    );
}

#[test]
fn reasons_read_well_and_serialise() {
    let p = Policy::default();
    let d = p.decide(&page(3, 0, L0, 500), 0, 15).expect("ok");
    assert_eq!(d.tier, L1);
    let text = d.reason.to_string();
    assert!(text.contains("age 15 turns since last access"), "{text}");
    assert!(text.contains("moves down to base"), "{text}");
    let json = serde_json::to_string(&d).expect("json");
    assert!(json.contains("\"rule\":\"curve\""), "{json}");
}

#[test]
fn budget_fit_keeps_newer_pages_sharper() {
    let p = Policy::builder().floor(EVICTED).build().expect("valid");
    let pages: Vec<_> = (0..6).map(|i| page(i, i * 2, L0, 900)).collect();
    let fit = p.fit_budget(&pages, 1_200, 0, 12).expect("feasible");
    assert!(fit.positions <= 1_200, "{}", fit.positions);
    let tiers: Vec<_> = fit.decisions.iter().map(|d| d.tier).collect();
    for w in tiers.windows(2) {
        assert!(
            w[1] <= w[0],
            "newer pages must keep at least as much: {tiers:?}"
        );
    }
    assert!(tiers[5] < tiers[0], "{tiers:?}");
    assert!(fit.decisions.iter().any(|d| d.reason.rule == Rule::Budget));
    // Under budget, nothing changes.
    let fit = p.fit_budget(&pages, 1_000_000, 0, 12).expect("feasible");
    assert!(fit.decisions.iter().all(|d| d.reason.rule != Rule::Budget));
}

#[test]
fn budget_fit_compresses_short_pages_first() {
    // Two pages of the same age: a short one loses nothing down to tiny (ratio 200/73 < 10), a dense
    // one loses already at base (3000/273 = 11x). The short one goes down first (though its id,
    // the last tie-break, would say otherwise).
    let p = Policy::default();
    let dense = page(1, 0, L0, 3_000);
    let short = page(2, 0, L0, 200);
    let fit = p
        .fit_budget(&[dense, short], 421 + 73, 0, 0)
        .expect("feasible");
    let tiers: Vec<_> = fit.decisions.iter().map(|d| d.tier).collect();
    assert_eq!(tiers, [L0, L3]);
    assert_eq!(fit.positions, 494);
}

#[test]
fn budget_fit_reports_infeasible_pins() {
    let p = Policy::default();
    let mut pages: Vec<_> = (0..3).map(|i| page(i, 0, L0, 500)).collect();
    pages[0].pinned = true;
    pages[1].pinned = true;
    let err = p
        .fit_budget(&pages, 800, 0, 0)
        .expect_err("two large pins need 842");
    assert!(
        matches!(
            err,
            PolicyError::OverBudget {
                budget: 800,
                pinned_positions: 842,
                pinned_pages: 2
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("842"), "{err}");
    // Exactly enough for the pins: the unpinned page goes.
    let fit = p.fit_budget(&pages, 842, 0, 0).expect("feasible");
    let tiers: Vec<_> = fit.decisions.iter().map(|d| d.tier).collect();
    assert_eq!(tiers, [L0, L0, Tier::Evicted]);
}

#[test]
fn due_names_the_turn_the_default_curve_moves_a_page() {
    // The default policy keeps a never-accessed page large through age 10, base through 20,
    // small through 37 and tiny (the floor) after that.
    let policy = Policy::default();
    let mut p = page(1, 100, L0, 500);
    let mut dues = Vec::new();
    for turn in 100..200 {
        let d = policy.decide(&p, 0, turn).unwrap();
        if d.changed() {
            p.set_tier(d.tier);
        }
        let due = policy.due(&p, 0, turn).unwrap();
        if dues.last() != Some(&due.turn) {
            dues.push(due.turn);
        }
    }
    assert_eq!(dues, vec![Some(111), Some(121), Some(138), None]);
}

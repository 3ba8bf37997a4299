//! Property tests: retention, reinforcement, budgets, the no-rise rule, floors, determinism.

use std::collections::BTreeMap;

use lethe_policy::{
    retention, AgeFrom, Clock, Curve, Mode, PageState, Policy, PolicyError, Rule, Tier,
};
use proptest::prelude::*;

#[path = "../../tests/support/fuzz_runner.rs"]
mod fuzz_runner;

const LEVELS: usize = 4;

fn tier() -> impl Strategy<Value = Tier> {
    prop_oneof![
        8 => (0..LEVELS).prop_map(|i| Policy::default().ladder().tier_at(i)),
        1 => Just(Tier::Evicted),
    ]
}

fn level_name(i: usize) -> &'static str {
    ["large", "base", "small", "tiny", "evicted"][i]
}

fn curve() -> impl Strategy<Value = Curve> {
    prop_oneof![
        prop::collection::vec(0u64..200, LEVELS).prop_map(|mut after| {
            after.sort_unstable();
            Curve::Step { after }
        }),
        prop::collection::vec(0.0f64..=1.0, LEVELS).prop_map(|mut thresholds| {
            thresholds.sort_by(|a, b| b.total_cmp(a));
            Curve::Retention { thresholds }
        }),
    ]
}

prop_compose! {
    fn policy()(
        curve in curve(),
        clock in prop_oneof![Just(Clock::Turns), Just(Clock::Seconds)],
        age_from in prop_oneof![Just(AgeFrom::Created), Just(AgeFrom::LastAccess)],
        stability in 0.5f64..500.0,
        growth in 1.0f64..4.0,
        floor in 0..=LEVELS,
        pin in proptest::option::of(0..LEVELS),
        ttl_turns in proptest::option::of(1u64..300),
        ttl_seconds in proptest::option::of(1u64..3_000),
    ) -> Policy {
        let mut b = Policy::builder()
            .curve(curve)
            .clock(clock)
            .age_from(age_from)
            .reinforcement(stability, growth)
            .floor(level_name(floor))
            .ttl_turns(ttl_turns)
            .ttl_seconds(ttl_seconds);
        if let Some(pin) = pin {
            b = b.pin_tier(level_name(pin.min(floor)));
        }
        b.build().expect("generated policies are valid")
    }
}

prop_compose! {
    /// A page and a (turn, now) at or after everything it records.
    fn page_at(id: u64)(
        created_turn in 0u64..200,
        created_at in 0u64..2_000,
        access in proptest::option::of((0u64..100, 0u64..1_000, 1u32..6)),
        tier_access_gap in 0u32..2,
        pinned in proptest::bool::weighted(0.15),
        tier in tier(),
        text_tokens in 0u32..3_000,
        later in (0u64..400, 0u64..4_000),
    ) -> (PageState, u64, u64) {
        let mut page = PageState::new(id, created_turn, created_at, tier, text_tokens);
        if let Some((dt, ds, n)) = access {
            page.last_access_turn = created_turn + dt;
            page.last_access_at = created_at + ds;
            page.access_count = n;
            page.tier_access_count = n.saturating_sub(tier_access_gap);
        }
        page.pinned = pinned;
        let turn = page.last_access_turn + later.0;
        let now = page.last_access_at + later.1;
        (page, now, turn)
    }
}

prop_compose! {
    fn pages()(n in 0usize..24)(
        pages in (0..n as u64).map(page_at).collect::<Vec<_>>(),
        extra in (0u64..50, 0u64..500),
    ) -> (Vec<PageState>, u64, u64) {
        let now = pages.iter().map(|p| p.1).max().unwrap_or(0) + extra.1;
        let turn = pages.iter().map(|p| p.2).max().unwrap_or(0) + extra.0;
        (pages.into_iter().map(|p| p.0).collect(), now, turn)
    }
}

proptest! {
    #![proptest_config(fuzz_runner::config("policy properties", 256))]

    #[test]
    fn retention_is_within_unit_interval_and_non_increasing_in_age(
        a in 0.0f64..1e7, b in 0.0f64..1e7, s in 1e-3f64..1e6,
    ) {
        let (young, old) = if a <= b { (a, b) } else { (b, a) };
        let (ry, ro) = (retention(young, s), retention(old, s));
        prop_assert!((0.0..=1.0).contains(&ry) && (0.0..=1.0).contains(&ro));
        prop_assert!(ro <= ry, "R({old}) = {ro} > R({young}) = {ry}");
        prop_assert_eq!(retention(0.0, s), 1.0);
    }

    #[test]
    fn page_retention_is_non_increasing_in_time(
        policy in policy(), (page, now, turn) in page_at(0), dt in 0u64..1_000, ds in 0u64..10_000,
    ) {
        let r0 = policy.retention(&page, now, turn);
        let r1 = policy.retention(&page, now + ds, turn + dt);
        prop_assert!((0.0..=1.0).contains(&r0) && (0.0..=1.0).contains(&r1));
        prop_assert!(r1 <= r0);
    }

    #[test]
    fn more_accesses_never_lower_retention(
        policy in policy(), (page, now, turn) in page_at(0), more in 1u32..50,
    ) {
        let mut reinforced = page.clone();
        reinforced.access_count += more;
        prop_assert!(policy.retention(&reinforced, now, turn) >= policy.retention(&page, now, turn));
        // Nor does the access itself (it can only move the last access later).
        let mut accessed = page.clone();
        accessed.record_access(turn, now);
        prop_assert!(policy.retention(&accessed, now, turn) >= policy.retention(&page, now, turn));
    }

    #[test]
    fn never_up_without_an_access_or_a_pin(policy in policy(), (page, now, turn) in page_at(0)) {
        let d = policy.decide(&page, now, turn).expect("tier on the ladder");
        if !page.pinned && !page.accessed_since_tier_change() {
            prop_assert!(d.tier >= page.tier, "{:?} -> {:?}: {}", page.tier, d.tier, d.reason);
        }
        if page.tier.is_evicted() {
            prop_assert_eq!(d.tier, Tier::Evicted);
        }
    }

    #[test]
    fn floor_holds_unless_ttl(policy in policy(), (page, now, turn) in page_at(0)) {
        let d = policy.decide(&page, now, turn).expect("tier on the ladder");
        if d.reason.rule != Rule::TtlExpired {
            prop_assert!(
                d.tier <= policy.floor().max(page.tier),
                "floor {:?}, from {:?}, to {:?}", policy.floor(), page.tier, d.tier
            );
        }
        if page.pinned && !page.tier.is_evicted() {
            prop_assert_eq!(d.tier, policy.pin_tier().unwrap_or(page.tier));
        }
    }

    /// Simulates a page's life: random accesses and maintenance passes with decisions applied. A
    /// page's tier only rises at a pass that follows an access (it is never pinned here).
    #[test]
    fn simulated_life_never_rises_without_access(
        policy in policy(),
        steps in prop::collection::vec((0u64..20, 0u64..200, proptest::bool::weighted(0.2)), 1..60),
    ) {
        let mut page = PageState::new(1, 0, 0, Tier::At(Mode::Large), 800);
        let (mut turn, mut now) = (0u64, 0u64);
        for (dt, ds, access) in steps {
            turn += dt;
            now += ds;
            let accessed_before = page.accessed_since_tier_change();
            if access {
                page.record_access(turn, now);
            }
            let d = policy.decide(&page, now, turn).expect("ok");
            if d.tier < page.tier {
                prop_assert!(access || accessed_before, "rose without access: {}", d.reason);
                prop_assert_eq!(d.reason.rule, Rule::Reinforced);
            }
            if d.changed() {
                page.set_tier(d.tier);
            }
        }
    }

    #[test]
    fn budget_holds_when_feasible_and_infeasibility_is_reported(
        policy in policy(), (pages, now, turn) in pages(), budget in 0u64..6_000,
    ) {
        let decided = policy.decide_all(&pages, now, turn).expect("ok");
        let pinned: u64 = pages.iter().zip(&decided)
            .filter(|(p, _)| p.pinned)
            .map(|(_, d)| u64::from(policy.ladder().positions(d.tier)))
            .sum();
        match policy.fit_budget(&pages, budget, now, turn) {
            Ok(fit) => {
                prop_assert!(pinned <= budget);
                let total: u64 = fit.decisions.iter()
                    .map(|d| u64::from(policy.ladder().positions(d.tier))).sum();
                prop_assert_eq!(total, fit.positions);
                prop_assert!(total <= budget, "{} > {}", total, budget);
                for ((page, d), base) in pages.iter().zip(&fit.decisions).zip(&decided) {
                    prop_assert_eq!(d.id, page.id);
                    // Budget fitting only lowers, and never moves pins.
                    prop_assert!(d.tier >= base.tier);
                    if page.pinned {
                        prop_assert_eq!(d.tier, base.tier);
                    }
                    if !page.pinned && !page.accessed_since_tier_change() {
                        prop_assert!(d.tier >= page.tier);
                    }
                }
            }
            Err(PolicyError::OverBudget { budget: b, pinned_positions, .. }) => {
                prop_assert_eq!(b, budget);
                prop_assert_eq!(pinned_positions, pinned);
                prop_assert!(pinned > budget);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// Among unpinned pages with the same text and the same decay tier, the one with more
    /// retention (newer, or accessed more) never ends with less resolution.
    #[test]
    fn budget_favours_retention(
        policy in policy(), (pages, now, turn) in pages(), budget in 0u64..6_000,
    ) {
        let pages: Vec<_> = pages.into_iter().map(|mut p| {
            p.pinned = false;
            p.text_tokens = 900;
            p
        }).collect();
        let decided = policy.decide_all(&pages, now, turn).expect("ok");
        let fit = policy.fit_budget(&pages, budget, now, turn).expect("nothing pinned");
        for i in 0..pages.len() {
            for j in 0..pages.len() {
                let (ri, rj) = (policy.retention(&pages[i], now, turn), policy.retention(&pages[j], now, turn));
                if decided[i].tier == decided[j].tier && ri > rj {
                    prop_assert!(fit.decisions[i].tier <= fit.decisions[j].tier,
                        "page {} (R {ri}) at {:?}, page {} (R {rj}) at {:?}",
                        i, fit.decisions[i].tier, j, fit.decisions[j].tier);
                }
            }
        }
    }

    #[test]
    fn outputs_are_deterministic_and_order_independent(
        policy in policy(), (pages, now, turn) in pages(), budget in 0u64..6_000, seed in any::<u64>(),
    ) {
        prop_assert_eq!(policy.decide_all(&pages, now, turn).ok(), policy.decide_all(&pages, now, turn).ok());
        let a = policy.fit_budget(&pages, budget, now, turn);
        let b = policy.fit_budget(&pages, budget, now, turn);
        prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
        // The same pages in another order get the same tiers (ids are unique here).
        let mut shuffled = pages.clone();
        let n = shuffled.len();
        let mut x = seed;
        for i in (1..n).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (x >> 33) as usize % (i + 1));
        }
        if let (Ok(a), Ok(c)) = (a, policy.fit_budget(&shuffled, budget, now, turn)) {
            let by_id = |fit: &lethe_policy::BudgetFit| -> BTreeMap<u64, Tier> {
                fit.decisions.iter().map(|d| (d.id, d.tier)).collect()
            };
            prop_assert_eq!(by_id(&a), by_id(&c));
        }
    }

    #[test]
    fn toml_round_trips_any_policy(policy in policy()) {
        let text = policy.to_toml().expect("serialises");
        prop_assert_eq!(Policy::from_toml_str(&text).expect("reads back"), policy);
    }

    #[test]
    fn a_page_never_moves_before_it_is_due_and_moves_when_it_is(
        policy in policy(), (page, now, turn) in page_at(0), dt in 0u64..600, ds in 0u64..6_000,
    ) {
        // The page as maintenance leaves it: at the tier decided now.
        let mut page = page;
        let decided = policy.decide(&page, now, turn).expect("on the ladder");
        if decided.changed() {
            page.set_tier(decided.tier);
        }
        prop_assume!(!policy.decide(&page, now, turn).expect("decides").changed());
        let due = policy.due(&page, now, turn).expect("due");
        prop_assert!(!due.is_due(now, turn) || due.turn == Some(turn) || due.time == Some(now));
        let (later_now, later_turn) = (now + ds, turn + dt);
        if !due.is_due(later_now, later_turn) {
            let d = policy.decide(&page, later_now, later_turn).expect("decides");
            prop_assert!(!d.changed(), "moved at +{dt} turns +{ds} s before due {due:?}: {}", d.reason);
        }
        // At the due turn (or time) itself it moves, and one step before it does not.
        let stays = |now, turn| !policy.decide(&page, now, turn).expect("decides").changed();
        let time_due = due.time.unwrap_or(u64::MAX);
        if let Some(t) = due.turn.filter(|&t| t > turn) {
            prop_assert!(!stays(now, t), "due at turn {t} but stays");
            prop_assert!(now >= time_due || stays(now, t - 1), "moves at turn {}, before due {t}", t - 1);
        }
        if let Some(t) = due.time.filter(|&t| t > now) {
            prop_assert!(!stays(t, turn), "due at time {t} but stays");
            prop_assert!(turn >= due.turn.unwrap_or(u64::MAX) || stays(t - 1, turn), "moves at time {}, before due {t}", t - 1);
        }
    }
}

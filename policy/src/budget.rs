//! Fitting a whole set of pages into a budget of decoder positions.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::decision::{Decision, Rule};
use crate::error::{PolicyError, Result};
use crate::page::PageState;
use crate::policy::Policy;
use lethe_mode::Tier;

/// The outcome of [`Policy::fit_budget`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetFit {
    /// One decision per page, in the order the pages were given.
    pub decisions: Vec<Decision>,
    /// Decoder positions the pages take at their decided tiers (never more than `budget`).
    pub positions: u64,
    /// The budget asked for.
    pub budget: u64,
}

impl Policy {
    /// Chooses tiers for all `pages` so that their decoder positions total at most
    /// `budget_positions`.
    ///
    /// Each page starts at its [`Policy::decide`] tier, which is also the most resolution it can
    /// get (budget fitting only ever lowers a page). While over budget, the one-level demotion that
    /// loses the least estimated value per position saved is applied, where a page's value at a tier
    /// is its retention times the recall estimate ([`Policy::recall_curve`]) at its compression
    /// ratio there (0 when evicted). So pages with higher retention (newer, more often accessed)
    /// keep more resolution; short pages, which lose little by compression, are lowered first.
    /// Ties go to demoting the page with lower retention, then the older page, then fewer accesses,
    /// then the lower id, then the earlier in `pages`, so the result is deterministic. Pinned pages
    /// keep their decided tier; any other page may be evicted (floors bound decay, not budgets).
    ///
    /// # Errors
    /// [`PolicyError::OverBudget`] when the pinned pages alone need more than the budget;
    /// [`PolicyError::NotOnLadder`] as [`Policy::decide`].
    pub fn fit_budget(
        &self,
        pages: &[PageState],
        budget_positions: u64,
        now: u64,
        turn: u64,
    ) -> Result<BudgetFit> {
        let mut decisions = self.decide_all(pages, now, turn)?;
        let cost = |t: Tier| u64::from(self.ladder.positions(t));
        let (pinned_pages, pinned_positions) = pages
            .iter()
            .zip(&decisions)
            .filter(|(p, d)| p.pinned && !d.tier.is_evicted())
            .fold((0usize, 0u64), |(n, sum), (_, d)| {
                (n + 1, sum + cost(d.tier))
            });
        if pinned_positions > budget_positions {
            return Err(PolicyError::OverBudget {
                budget: budget_positions,
                pinned_positions,
                pinned_pages,
            });
        }
        let mut total: u64 = decisions.iter().map(|d| cost(d.tier)).sum();
        if total <= budget_positions {
            return Ok(BudgetFit {
                decisions,
                positions: total,
                budget: budget_positions,
            });
        }

        let ranks: Vec<Rank> = pages
            .iter()
            .map(|p| Rank {
                retention: self.retention(p, now, turn),
                log_retention: self.log_retention(p, now, turn),
                created_turn: p.created_turn,
                created_at: p.created_at,
                access_count: p.access_count,
                id: p.id,
            })
            .collect();
        let mut tiers: Vec<Tier> = decisions.iter().map(|d| d.tier).collect();
        let mut heap = BinaryHeap::new();
        for (index, page) in pages.iter().enumerate() {
            if !page.pinned && !tiers[index].is_evicted() {
                heap.push(Reverse(self.candidate(
                    page,
                    &ranks[index],
                    index,
                    tiers[index],
                )));
            }
        }
        while total > budget_positions {
            // Cannot run dry: evicting every unpinned page leaves `pinned_positions`, which fits.
            let Some(Reverse(c)) = heap.pop() else { break };
            let lower = self.ladder.lower(tiers[c.index]);
            total -= cost(tiers[c.index]) - cost(lower);
            tiers[c.index] = lower;
            if !lower.is_evicted() {
                heap.push(Reverse(self.candidate(
                    &pages[c.index],
                    &ranks[c.index],
                    c.index,
                    lower,
                )));
            }
        }

        for (d, &tier) in decisions.iter_mut().zip(&tiers) {
            if tier != d.tier {
                d.reason.text = format!(
                    "{}; lowered from {} to {} to fit a budget of {} positions",
                    d.reason.text, d.tier, tier, budget_positions
                );
                d.reason.rule = Rule::Budget;
                d.tier = tier;
            }
        }
        Ok(BudgetFit {
            decisions,
            positions: total,
            budget: budget_positions,
        })
    }

    /// Estimated value of `page` kept at `tier`: the recall estimate at its compression ratio.
    fn tier_value(&self, page: &PageState, tier: Tier) -> f64 {
        match self.ladder.level(tier) {
            None => 0.0,
            Some(level) => self
                .recall
                .recall(f64::from(page.text_tokens) / f64::from(level.positions)),
        }
    }

    fn candidate(&self, page: &PageState, rank: &Rank, index: usize, tier: Tier) -> Candidate {
        let lower = self.ladder.lower(tier);
        let saved = self.ladder.positions(tier) - self.ladder.positions(lower);
        let lost = (self.tier_value(page, tier) - self.tier_value(page, lower)).max(0.0);
        Candidate {
            loss: rank.retention * lost / f64::from(saved.max(1)) + 0.0,
            log_retention: rank.log_retention,
            created_turn: rank.created_turn,
            created_at: rank.created_at,
            access_count: rank.access_count,
            id: rank.id,
            index,
        }
    }
}

struct Rank {
    retention: f64,
    log_retention: f64,
    created_turn: u64,
    created_at: u64,
    access_count: u32,
    id: u64,
}

/// A possible one-level demotion; the smallest is applied first.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    loss: f64,
    log_retention: f64,
    created_turn: u64,
    created_at: u64,
    access_count: u32,
    id: u64,
    index: usize,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.loss
            .total_cmp(&other.loss)
            .then(self.log_retention.total_cmp(&other.log_retention))
            .then(self.created_turn.cmp(&other.created_turn))
            .then(self.created_at.cmp(&other.created_at))
            .then(self.access_count.cmp(&other.access_count))
            .then(self.id.cmp(&other.id))
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

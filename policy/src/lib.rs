//! `lethe-policy`: pure decay and budget decisions for Lethe's page memory.
//!
//! Pages of old dialogue sit on a ladder of resolution tiers ([`Tier`], shared with the store and
//! the facade through `lethe-mode`) (by default DeepSeek-OCR's modes
//! `large` → `base` → `small` → `tiny`, then evicted). As a page ages it moves down the ladder and
//! is re-rendered with fewer vision tokens: a forgetting curve. This crate decides *which* tier,
//! and never touches storage, images or models:
//!
//! - **Curves**: step thresholds by age, or exponential retention `R = exp(-t / S)` whose
//!   stability `S = S0 · growth^accesses` grows with every access (spaced repetition). Age is
//!   counted in turns or seconds, from creation or from the last access.
//! - **Rules**: pins (stay put, or go to a pin tier), a floor tier decay never goes below, TTL
//!   eviction, and the guarantee that a page never moves *up* without an access or a pin.
//! - **Budgets**: [`Policy::fit_budget`] chooses tiers for a whole session so its decoder positions
//!   fit a budget, keeping the most resolution for the newest and most accessed pages.
//! - **Policies are data**: TOML in and out ([`Policy::from_toml_str`], [`Policy::from_path`],
//!   [`Policy::to_toml`]); the documented default is `policies/default.toml` at the repository
//!   root, equal to [`Policy::default`].
//!
//! Time is always a parameter (`now` in seconds, `turn` the current turn index), so every decision
//! is a deterministic function of its inputs. Every [`Decision`] carries a [`Reason`] (a [`Rule`],
//! the numbers, and a sentence) for the store's audit log.
//!
//! ```
//! use lethe_policy::{Curve, Mode, PageState, Policy, Rule, Tier};
//!
//! # fn main() -> lethe_policy::Result<()> {
//! // Step down one tier every 10 turns, never below `small`.
//! let policy = Policy::builder()
//!     .curve(Curve::Step { after: vec![10, 20, 30, 40] })
//!     .floor("small")
//!     .build()?;
//!
//! // A page made at turn 0, at the top tier (`large`).
//! let mut page = PageState::new(7, 0, 0, Tier::At(Mode::Large), 900);
//! let d = policy.decide(&page, 0, 25)?;
//! assert_eq!(d.tier, Tier::At(Mode::Small)); // 25 turns: two steps down
//! assert_eq!(d.reason.rule, Rule::Curve);
//! page.set_tier(d.tier);
//!
//! let d = policy.decide(&page, 0, 45)?; // the curve says evicted; the floor holds
//! assert_eq!((d.tier, d.reason.rule), (Tier::At(Mode::Small), Rule::Floor));
//!
//! // An access at turn 45 resets the age (ages count from the last access) and lets it rise.
//! page.record_access(45, 0);
//! let d = policy.decide(&page, 0, 46)?;
//! assert_eq!((d.tier, d.reason.rule), (Tier::At(Mode::Large), Rule::Reinforced));
//! println!("{}", d.reason); // "age 1 turns since last access, ...: accessed since reaching small, rises to large"
//!
//! // Fit two pages into 500 decoder positions: the newer page keeps more resolution.
//! let old = PageState::new(1, 0, 0, Tier::At(Mode::Large), 900);
//! let new = PageState::new(2, 40, 0, Tier::At(Mode::Large), 900);
//! let fit = policy.fit_budget(&[old, new], 500, 0, 41)?;
//! assert!(fit.positions <= 500);
//! assert!(fit.decisions[1].tier < fit.decisions[0].tier);
//!
//! // Policies are data.
//! let again = Policy::from_toml_str(&policy.to_toml()?)?;
//! assert_eq!(again, policy);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod budget;
mod curve;
mod decision;
mod error;
mod ladder;
mod page;
mod policy;

pub use budget::BudgetFit;
pub use curve::{retention, AgeFrom, Clock, Curve, RecallCurve, Reinforcement};
pub use decision::{Decision, Due, Reason, Rule};
pub use error::{PolicyError, Result};
pub use ladder::{Ladder, Level};
pub use lethe_mode::{Mode, Tier, EVICTED};
pub use page::PageState;
pub use policy::{Policy, PolicyBuilder};

//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when building, loading or applying a policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The TOML text is not valid TOML, or does not have the policy's shape (a field has the wrong
    /// type, is missing, or is unknown). The source error names the key and the line.
    #[error("cannot parse policy TOML{}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file the text came from, when it came from one.
        path: Option<PathBuf>,
        /// What the TOML parser said.
        #[source]
        source: toml::de::Error,
    },
    /// A field has a value the policy cannot use.
    #[error("invalid policy field `{field}`{}: {message}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Invalid {
        /// The field's dotted path as written in TOML, e.g. `curve.thresholds`.
        field: String,
        /// What is wrong with it.
        message: String,
        /// The file the policy came from, when it came from one.
        path: Option<PathBuf>,
    },
    /// The policy file could not be read.
    #[error("cannot read policy file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The policy could not be written as TOML.
    #[error("cannot write the policy as TOML")]
    Serialize {
        /// What the TOML writer said.
        #[source]
        source: toml::ser::Error,
    },
    /// A page's current tier is not on this policy's ladder (the ladder changed since the page
    /// reached it).
    #[error("page {id} is at tier {tier}, which the policy's ladder ({levels}) does not have")]
    NotOnLadder {
        /// The page.
        id: u64,
        /// Its tier.
        tier: lethe_mode::Tier,
        /// The ladder's levels, most resolution first.
        levels: String,
    },
    /// No choice of tiers fits the budget: the pinned pages alone need more positions.
    #[error(
        "a budget of {budget} decoder positions cannot be met: {pinned_pages} pinned page(s) alone \
         need {pinned_positions} positions (unpin pages or raise the budget)"
    )]
    OverBudget {
        /// The budget asked for.
        budget: u64,
        /// Positions the pinned pages need at their tiers.
        pinned_positions: u64,
        /// How many pages are pinned (and not evicted).
        pinned_pages: usize,
    },
}

impl PolicyError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError::Invalid {
            field: field.into(),
            message: message.into(),
            path: None,
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, PolicyError>;

//! Hot turns: appending to a scope, reading its turns still kept as text, its turn counter.

use serde::{Deserialize, Serialize};

use crate::engine::Batch;
use crate::error::Result;
use crate::keys;
use crate::store::{decode, encode, validate_scope, Store};
use crate::types::{NewTurn, Scope, TurnRange, TurnRecord};

#[derive(Debug, Serialize, Deserialize)]
struct ScopeCounter {
    scope: Scope,
    next_turn: u64,
}

impl Store {
    fn counter(&self, scope: &Scope) -> Result<u64> {
        Ok(self
            .read::<ScopeCounter>(&keys::scope_counter(scope))?
            .map_or(0, |c| c.next_turn))
    }

    /// Appends turns to a scope's hot tier; returns the indices they were given.
    pub fn append(&self, scope: &Scope, turns: &[NewTurn]) -> Result<TurnRange> {
        validate_scope(scope)?;
        let _g = self.lock();
        let start = self.counter(scope)?;
        let mut b = Batch::new();
        for (i, t) in turns.iter().enumerate() {
            let index = start + i as u64;
            let rec = TurnRecord {
                index,
                speaker: t.speaker.clone(),
                text: t.text.clone(),
                timestamp: t.timestamp,
                session: t.session.clone(),
                time_label: t.time_label.clone(),
            };
            b.put(keys::turn(scope, index), encode("turn", &rec)?);
        }
        let end = start + turns.len() as u64;
        let counter = ScopeCounter {
            scope: scope.clone(),
            next_turn: end,
        };
        b.put(
            keys::scope_counter(scope),
            encode("scope counter", &counter)?,
        );
        self.commit(b)?;
        Ok(TurnRange { start, end })
    }

    /// A scope's hot turns (still text), oldest first.
    pub fn hot_turns(&self, scope: &Scope) -> Result<Vec<TurnRecord>> {
        self.engine
            .scan_prefix(&keys::turns_prefix(scope))?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    /// The index the scope's next appended turn will get (turns ever appended).
    pub fn next_turn(&self, scope: &Scope) -> Result<u64> {
        self.counter(scope)
    }

    /// Every scope that ever had a turn appended, in key order.
    pub fn scopes(&self) -> Result<Vec<Scope>> {
        self.engine
            .scan_prefix(keys::SCOPE_COUNTERS)?
            .iter()
            .map(|(k, v)| decode::<ScopeCounter>(k, v).map(|c| c.scope))
            .collect()
    }
}

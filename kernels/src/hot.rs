//! Keeping rayon's workers awake through a run of short parallel products.
//!
//! A decode step is about 85 products of a few hundred microseconds each, every one split over
//! the workers and joined. Between two products a rayon worker with nothing to steal yields
//! about 30 times and then sleeps on a futex, and the next product has to wake it: on a
//! two-core VM that measured about 95 sleeps a step, with the workers 1.75 CPUs busy out of 2.
//! [`run_hot`] runs a closure on one worker while every other worker polls for the work it
//! splits off, so each product starts on all threads at once.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on one of rayon's workers while every other worker of the pool spins, taking the
/// work that `f` splits off (joins, parallel iterators) the moment it is pushed, rather than
/// sleeping between one product and the next. The spinning ends when `f` returns or panics.
///
/// Meant for a burst of short products (a decode step) started from outside the pool: the
/// other workers burn their cores for as long as `f` runs, even while it does serial work.
/// Called on one of the pool's workers (several readings side by side, each on its own
/// worker), or with a pool of one, `f` simply runs in place: the other workers have work of
/// their own.
///
/// ```
/// let sum: u64 = lethe_kernels::run_hot(|| {
///     let (a, b) = rayon::join(|| (0..1000u64).sum::<u64>(), || (1000..2000u64).sum::<u64>());
///     a + b
/// });
/// assert_eq!(sum, (0..2000u64).sum::<u64>());
/// ```
pub fn run_hot<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() || rayon::current_num_threads() < 2 {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let done = &done;
        for _ in 1..rayon::current_num_threads() {
            s.spawn(move |_| {
                // A worker with a body on its stack (this one's, waiting on a join, or another
                // caller's) must not spin here: that body could not resume until this spinning
                // ended, and two such waits would hold each other forever.
                if IN_BODY.get() {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let _hot = Hot::enter(done);
        f()
    })
}

thread_local! {
    /// Whether this worker is running the body of a [`run_hot`].
    static IN_BODY: Cell<bool> = const { Cell::new(false) };
}

/// Marks the body's worker for as long as it runs, and when dropped (the body returned or
/// panicked) releases the spinners.
struct Hot<'a> {
    done: &'a AtomicBool,
    was_in_body: bool,
}

impl<'a> Hot<'a> {
    fn enter(done: &'a AtomicBool) -> Self {
        Self {
            done,
            was_in_body: IN_BODY.replace(true),
        }
    }
}

impl Drop for Hot<'_> {
    fn drop(&mut self) {
        IN_BODY.set(self.was_in_body);
        self.done.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// 200 joins whose halves sleep a little (so that the other workers steal them); returns
    /// the sum the halves computed.
    fn joins() -> u64 {
        let half = |v: u64| {
            std::thread::sleep(Duration::from_micros(50));
            v
        };
        (0..200u64)
            .map(|i| {
                let (a, b) = rayon::join(|| half(i), || half(2 * i));
                a + b
            })
            .sum()
    }

    /// Runs `f` on a thread of its own and fails if it has not finished within a minute (a
    /// deadlock fails the test instead of hanging the suite).
    fn within_a_minute(f: impl FnOnce() + Send + 'static) {
        let (sent, got) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            sent.send(()).ok();
        });
        got.recv_timeout(Duration::from_secs(60))
            .expect("run_hot did not finish within a minute");
    }

    #[test]
    fn joins_inside_return_their_result() {
        // Whether the other workers took part depends on what else the shared pool runs
        // meanwhile (other tests): `tests/run_hot.rs` checks that in a process of its own.
        assert_eq!(run_hot(joins), 3 * (0..200u64).sum::<u64>());
    }

    #[test]
    fn a_panic_in_the_body_ends_the_spinning_and_propagates() {
        let r = std::panic::catch_unwind(|| run_hot(|| -> u32 { panic!("planted") }));
        assert!(r.is_err());
        // Nothing was left spinning: the pool still runs a hot body to its end.
        within_a_minute(|| assert_eq!(run_hot(|| 7), 7));
    }

    #[test]
    fn bodies_side_by_side_on_workers_and_from_two_callers_all_finish() {
        // On the pool's workers (as readings in lanes): each body runs in place.
        within_a_minute(|| {
            let sums: Vec<u64> = (0..4).into_par_iter().map(|_| run_hot(joins)).collect();
            assert!(sums.iter().all(|&s| s == 3 * (0..200u64).sum::<u64>()));
        });
        // Two callers outside the pool at once: neither may spin on a worker that holds the
        // other's body.
        within_a_minute(|| {
            let a = std::thread::spawn(|| run_hot(joins));
            let b = run_hot(joins);
            assert_eq!(a.join().unwrap(), b);
        });
    }
}

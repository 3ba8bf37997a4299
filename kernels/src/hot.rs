//! Keeping rayon's workers awake through a run of short parallel products.
//!
//! A decode step is about 85 products of a few hundred microseconds each, every one split over
//! the workers and joined. Between two products a rayon worker with nothing to steal yields
//! about 30 times and then sleeps on a futex, and the next product has to wake it: on a
//! two-core VM that measured about 95 sleeps a step, with the workers 1.75 CPUs busy out of 2.
//! [`run_hot`] runs a closure on one worker while every other worker polls for the work it
//! splits off, so each product starts on all threads at once.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on one of rayon's workers while every other worker of the pool spins, taking the
/// work that `f` splits off (joins, parallel iterators) the moment it is pushed, rather than
/// sleeping between one product and the next. The spinning ends when `f` returns or panics.
///
/// Meant for a burst of short products (a decode step): the other workers burn their cores
/// for as long as `f` runs, even while it does serial work. With one worker `f` simply runs.
///
/// ```
/// let sum: u64 = lethe_kernels::run_hot(|| {
///     let (a, b) = rayon::join(|| (0..1000u64).sum::<u64>(), || (1000..2000u64).sum::<u64>());
///     a + b
/// });
/// assert_eq!(sum, (0..2000u64).sum::<u64>());
/// ```
pub fn run_hot<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    /// Sets the flag when dropped, so that a panic in `f` also releases the spinners.
    struct Release<'a>(&'a AtomicBool);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let body = rayon::current_thread_index();
        let done = &done;
        for _ in 1..rayon::current_num_threads() {
            s.spawn(move |_| {
                // The body's own thread can pick this job up while it waits on a join; it must
                // not spin there, or the body would never resume to end the spinning.
                if rayon::current_thread_index() == body {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let _release = Release(done);
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a rayon pool")
    }

    #[test]
    fn joins_inside_use_every_worker_and_the_result_comes_back() {
        for threads in [1, 2, 3] {
            let seen = pool(threads).install(|| {
                run_hot(|| {
                    let threads_seen = AtomicUsize::new(0);
                    let mask = std::sync::Mutex::new(0u64);
                    // Enough joins that every worker takes part when it spins.
                    for _ in 0..200 {
                        rayon::join(
                            || {
                                let i = rayon::current_thread_index().unwrap_or(63);
                                *mask.lock().unwrap() |= 1 << i;
                                std::thread::sleep(std::time::Duration::from_micros(50));
                            },
                            || {
                                let i = rayon::current_thread_index().unwrap_or(63);
                                *mask.lock().unwrap() |= 1 << i;
                                std::thread::sleep(std::time::Duration::from_micros(50));
                            },
                        );
                        threads_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    assert_eq!(threads_seen.load(Ordering::Relaxed), 200);
                    let m = *mask.lock().unwrap();
                    m.count_ones() as usize
                })
            });
            // The second halves ran on the other workers (which one varies).
            if threads == 1 {
                assert_eq!(seen, 1);
            } else {
                assert!(seen >= 2 && seen <= threads, "{seen} of {threads} workers");
            }
        }
    }

    #[test]
    fn a_panic_in_the_body_ends_the_spinning_and_propagates() {
        let p = pool(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.install(|| run_hot(|| -> u32 { panic!("planted") }))
        }));
        assert!(r.is_err());
        // The pool is still usable: nothing was left spinning.
        assert_eq!(p.install(|| run_hot(|| 7)), 7);
    }
}

//! `run_hot` in a process of its own, so that no other test keeps the pool's workers busy.

use std::time::Duration;

#[test]
fn joins_inside_run_hot_use_the_other_workers() {
    let threads = rayon::current_num_threads();
    eprintln!("{threads} workers");
    let (seen, sum) = lethe_kernels::run_hot(|| {
        let mask = std::sync::Mutex::new(0u64);
        let note = || {
            let i = rayon::current_thread_index().unwrap_or(63);
            *mask.lock().unwrap() |= 1 << i;
            std::thread::sleep(Duration::from_micros(50));
        };
        let mut sum = 0;
        for i in 0..200u64 {
            let (a, b) = rayon::join(
                || {
                    note();
                    i
                },
                || {
                    note();
                    2 * i
                },
            );
            sum += a + b;
        }
        let seen = mask.lock().unwrap().count_ones() as usize;
        (seen, sum)
    });
    assert_eq!(sum, 3 * (0..200u64).sum::<u64>());
    // The second halves ran on the polling workers (which ones varies).
    assert!(seen >= threads.min(2), "{seen} of {threads} workers");
}

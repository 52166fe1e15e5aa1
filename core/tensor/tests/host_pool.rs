//! The process's kernel pool handed to a host: a plugin library's kernels
//! run on the host's threads through its parallel-for (and give the same
//! numbers), and a job that finds a pool busy runs on its caller's thread
//! instead of queueing. A test binary of its own: the pool is process-wide.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tailor_tensor::cpu::gemm_f32;
use tailor_tensor::cpu::pool::{use_host_pool, SpinPool};

#[test]
fn kernels_run_on_the_host_pool_and_a_busy_pool_is_not_waited_for() {
    let jobs = Arc::new(AtomicUsize::new(0));
    let counted = jobs.clone();
    // The "host": three scoped threads per job.
    let runner = Box::new(move |job: &(dyn Fn(usize, usize) + Sync)| {
        counted.fetch_add(1, Ordering::Relaxed);
        std::thread::scope(|scope| (0..3).for_each(|slot| drop(scope.spawn(move || job(slot, 3)))));
    });
    assert!(use_host_pool(3, runner));
    assert_eq!(SpinPool::global().threads(), 3);
    let (m, k, n) = (5, 64, 37);
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
    let mut y = vec![0.0f32; m * n];
    gemm_f32(&x, m, k, &w, n, &mut y);
    assert!(jobs.load(Ordering::Relaxed) >= 1, "the product ran on the host's pool");
    for (row, col) in [(0, 0), (2, 17), (4, 36)] {
        let want: f64 = (0..k).map(|i| x[row * k + i] as f64 * w[col * k + i] as f64).sum();
        assert!((y[row * n + col] as f64 - want).abs() < 1e-4, "y[{row},{col}] = {} vs {want}", y[row * n + col]);
    }

    // A pool of its own, busy with a slow job: a second caller's job runs
    // every slot on the second caller's thread.
    let pool = SpinPool::new(2);
    let ran_on = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        scope.spawn(|| pool.run(&|_, _| std::thread::sleep(std::time::Duration::from_millis(300))));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let caller = std::thread::current().id();
        pool.run(&|slot, slots| ran_on.lock().unwrap().push((slot, slots, std::thread::current().id())));
        let ran_on = ran_on.lock().unwrap();
        assert_eq!(ran_on.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), [(0, 2), (1, 2)]);
        assert!(ran_on.iter().all(|r| r.2 == caller), "the busy pool's slots ran on the caller");
    });
}

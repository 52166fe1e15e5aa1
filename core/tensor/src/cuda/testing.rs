//! What every crate's GPU tests share: the GPU, when a run asks for one
//! (`TAILOR_CUDA_TESTS=1`, as benches/cuda/run.sh sets), the CPU emulation
//! of the kernels otherwise, and [`crate::on_gpu_and_emulator`], which
//! writes each check as one test per executor.

use super::backend::{Backend, CudaBackend};
use super::emulator::Emulator;

/// The environment switch that asks for the GPU tests.
pub const SWITCH: &str = "TAILOR_CUDA_TESTS";

/// CUDA device 0 with a pool of `budget` bytes, or `None` (after saying
/// that the GPU test did not run) when [`SWITCH`] is not set. Panics when
/// it is set but no device works: a GPU run must not pass silently.
pub fn gpu_if_asked(budget: usize) -> Option<CudaBackend> {
    if std::env::var_os(SWITCH).is_none() {
        eprintln!("{SWITCH} not set: this GPU test did not run");
        return None;
    }
    Some(CudaBackend::new(0, budget).unwrap_or_else(|e| panic!("{SWITCH} is set but {e}")))
}

/// The kernels emulated on the CPU, with a pool of `budget` bytes. Panics
/// when the emulator cannot be set up (a test helper).
pub fn emulated(budget: usize) -> Backend<Emulator> {
    Backend::with_executor(Emulator::new().expect("the kernel emulator"), budget)
}

/// `$check` (generic over the executor) as two tests: `$gpu` on the GPU
/// when asked for (8 GiB pool), `$emulated` on the emulator (1 GiB).
#[macro_export]
macro_rules! on_gpu_and_emulator {
    ($check:ident, $gpu:ident, $emulated:ident) => {
        #[test]
        fn $gpu() {
            if let Some(gpu) = $crate::cuda::testing::gpu_if_asked(8 << 30) {
                $check(&gpu);
            }
        }

        #[test]
        fn $emulated() {
            $check(&$crate::cuda::testing::emulated(1 << 30));
        }
    };
}

//! The CUDA device: a context and one stream, the memory pool every device
//! buffer comes from, and the decoder's ops launched on device buffers.
//! Each op here has a CPU twin in [`crate::cpu`] that its GPU test compares
//! it with (tests/cuda_kernels.rs). All work goes to one stream, so launches
//! and copies run in the order they are issued; reading a result back
//! waits for them. That order is also what makes the pool's reuse safe: an
//! op's scratch buffers (positions, ids, pointer arrays) go back to the pool
//! when the call returns, possibly before its kernel has run, and whatever
//! takes them next writes them with a copy or kernel issued later on the
//! same stream.

use super::driver::CudaExecutor;
use super::kernels::{self, KernelSource};
use super::pool::{MemoryPool, PoolBlock, PoolStats, SharedBudget};
use crate::cpu::{AttentionShape, LoraPair, RopeTable};
use crate::{DType, Result, Tensor, TensorError};
use std::ffi::c_void;
use std::sync::Arc;

mod backward;
mod lora;
pub use backward::DeviceMatRef;
pub use lora::LoraLaunch;

/// Tokens one launch of the decode linear kernel takes (`LINEAR_TOKENS` in
/// linear.cu).
const LINEAR_TOKENS: usize = 8;
/// Tokens one launch of the prefill linear kernel takes
/// (`LINEAR_WIDE_TOKENS`); longer inputs are split.
const LINEAR_WIDE_TOKENS: usize = 32;
/// Weight rows per block of the linear kernel (`LINEAR_WARPS`).
const LINEAR_WARPS: usize = 4;
/// Warps per block of decode attention (`ATT_WARPS`).
const ATTENTION_WARPS: u32 = 4;
/// The longest head decode attention takes (`32 · ATT_MAX_PER_LANE`).
const ATTENTION_MAX_HEAD: usize = 256;
/// Queries per block of prefill attention (`PF_WARPS`).
const PREFILL_WARPS: usize = 8;
/// The longest head prefill attention takes (`PF_MAX_HEAD`).
const PREFILL_MAX_HEAD: usize = 128;
/// Rank entries per block of the LoRA shrink (`LORA_WARPS`).
const LORA_WARPS: usize = 8;

/// The weight dtypes [`Backend::linear`] takes.
pub const LINEAR_DTYPES: [DType; 8] =
    [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q4K, DType::Q6K, DType::F16, DType::BF16, DType::F32];

/// The key/value cache element types the attention kernels take.
pub const KV_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// The table dtypes [`Backend::embedding`] takes.
pub const EMBEDDING_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// What runs the kernels: the CUDA driver ([`CudaExecutor`]) or, on a
/// machine without a GPU, the CPU emulation of the kernels' own source
/// ([`super::emulator::Emulator`]), so the ops below are checked on both.
pub trait Executor {
    /// One device allocation.
    type Block;

    /// The device, for logs.
    fn describe(&self) -> String;

    /// `bytes` bytes of device memory (uninitialised; every op writes a
    /// buffer before it reads it). Out of memory is
    /// [`TensorError::DeviceOutOfMemory`].
    fn allocate(&self, bytes: usize) -> Result<Self::Block>;

    /// The block's device address, as kernels take it.
    fn address(&self, block: &mut Self::Block) -> u64;

    /// Copies `bytes` to the start of `block`.
    fn copy_in(&self, bytes: &[u8], block: &mut Self::Block) -> Result<()>;

    /// Copies the start of `block` into `out`, once everything issued
    /// before has finished.
    fn copy_out(&self, block: &Self::Block, out: &mut [u8]) -> Result<()>;

    /// Copies `bytes` bytes of `from`, from byte `from_offset`, to `to` at
    /// byte `to_offset` (both ranges inside their blocks).
    fn copy_between(
        &self,
        from: &Self::Block,
        from_offset: usize,
        to: &mut Self::Block,
        to_offset: usize,
        bytes: usize,
    ) -> Result<()>;

    /// Waits for everything issued so far.
    fn synchronize(&self) -> Result<()>;

    /// Launches `entry` of `kernel` over `grid` blocks of `threads` threads;
    /// `params` points at each parameter's value, as cuLaunchKernel takes
    /// them.
    ///
    /// # Safety
    /// `params` must match the kernel's parameter list in number, order and
    /// types, and every pointer among them must cover what the kernel reads
    /// and writes for this grid.
    unsafe fn launch(
        &self,
        kernel: &'static KernelSource,
        entry: &str,
        grid: (u32, u32),
        threads: u32,
        params: &mut [*mut c_void],
    ) -> Result<()>;
}

/// The decoder's ops on one device: an [`Executor`] and the memory pool
/// every device buffer comes from.
pub struct Backend<E: Executor> {
    executor: E,
    pool: MemoryPool<E::Block>,
}

/// The ops on a CUDA device.
pub type CudaBackend = Backend<CudaExecutor>;

/// Device memory from the pool, holding `bytes` bytes.
pub struct DeviceBuffer<B> {
    block: PoolBlock<B>,
    bytes: usize,
    ptr: u64,
}

/// A weight matrix on the device, `[rows, cols]`, in the dtype it was stored
/// in (GGUF blocks stay blocks).
pub struct DeviceMatrix<B> {
    buffer: DeviceBuffer<B>,
    dtype: DType,
    rows: usize,
    cols: usize,
}

/// A RoPE table on the device.
pub struct DeviceRope<B> {
    cos: DeviceBuffer<B>,
    sin: DeviceBuffer<B>,
    head_dim: usize,
    positions: usize,
}

/// One adapted projection on the device: `A` `[rank, in]` and `B`
/// `[out, rank]` in f32.
pub struct DeviceLora<B> {
    a: DeviceBuffer<B>,
    b: DeviceBuffer<B>,
    rank: usize,
    in_dim: usize,
    out_dim: usize,
}

/// One decode row's cached keys and values (`[length, n_kv_head ·
/// head_dim]` each, of the element type the op is given) and how many
/// positions they hold.
pub struct KvView<'a, B> {
    /// Keys.
    pub keys: &'a DeviceBuffer<B>,
    /// Values.
    pub values: &'a DeviceBuffer<B>,
    /// Positions to attend to (at least 1).
    pub length: usize,
}

impl CudaBackend {
    /// CUDA device `ordinal`, with a pool of at most `budget` bytes. Fails
    /// with [`TensorError::DeviceUnavailable`] when there is no driver or no
    /// such device (the caller falls back to the CPU).
    pub fn new(ordinal: usize, budget: usize) -> Result<CudaBackend> {
        Ok(Backend::with_executor(CudaExecutor::new(ordinal)?, budget))
    }

    /// [`CudaBackend::new`] whose memory also counts against `shared` (the
    /// daemon's device budget, across plugins).
    pub fn with_shared_budget(ordinal: usize, budget: usize, shared: Arc<dyn SharedBudget>) -> Result<CudaBackend> {
        Ok(Backend::with_pool(CudaExecutor::new(ordinal)?, MemoryPool::with_shared(budget, Some(shared))))
    }
}

impl<E: Executor> Backend<E> {
    /// The ops on `executor`'s device, with a pool of at most `budget` bytes.
    pub fn with_executor(executor: E, budget: usize) -> Backend<E> {
        Backend::with_pool(executor, MemoryPool::new(budget))
    }

    /// The ops on `executor`'s device, taking memory from `pool`.
    pub fn with_pool(executor: E, pool: MemoryPool<E::Block>) -> Backend<E> {
        Backend { executor, pool }
    }

    /// The device, for logs.
    pub fn describe(&self) -> String {
        self.executor.describe()
    }

    /// What the memory pool holds.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Waits for everything issued so far.
    pub fn synchronize(&self) -> Result<()> {
        self.executor.synchronize()
    }

    /// An uninitialised buffer of `bytes` bytes from the pool.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer<E::Block>> {
        let mut block = self.pool.take(bytes, |class| self.executor.allocate(class))?;
        let ptr = self.executor.address(block.block_mut());
        Ok(DeviceBuffer { block, bytes, ptr })
    }

    /// `values` copied to a new device buffer.
    pub fn upload<T: bytemuck::Pod>(&self, values: &[T]) -> Result<DeviceBuffer<E::Block>> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let mut buffer = self.alloc(bytes.len().max(1))?;
        buffer.bytes = bytes.len();
        if !bytes.is_empty() {
            self.executor.copy_in(bytes, buffer.block.block_mut())?;
        }
        Ok(buffer)
    }

    /// The first `count` values of `buffer`, once every op issued before has
    /// finished.
    pub fn download<T: bytemuck::Pod>(&self, buffer: &DeviceBuffer<E::Block>, count: usize) -> Result<Vec<T>> {
        let bytes = count * std::mem::size_of::<T>();
        buffer.expect_bytes(bytes, "download")?;
        let mut values = vec![T::zeroed(); count];
        if bytes > 0 {
            self.executor.copy_out(buffer.block.block(), bytemuck::cast_slice_mut(&mut values))?;
        }
        Ok(values)
    }

    /// `from`'s bytes copied into `to`, on the device.
    pub fn copy(&self, from: &DeviceBuffer<E::Block>, to: &mut DeviceBuffer<E::Block>) -> Result<()> {
        self.copy_region(from, 0, to, 0, from.bytes)
    }

    /// `bytes` bytes of `from` from byte `from_offset` copied into `to` at
    /// byte `to_offset`, on the device.
    pub fn copy_region(
        &self,
        from: &DeviceBuffer<E::Block>,
        from_offset: usize,
        to: &mut DeviceBuffer<E::Block>,
        to_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        from.expect_bytes(from_offset + bytes, "copy from")?;
        to.expect_bytes(to_offset + bytes, "copy to")?;
        if bytes == 0 {
            return Ok(());
        }
        self.executor.copy_between(from.block.block(), from_offset, to.block.block_mut(), to_offset, bytes)
    }

    /// A 2-D weight matrix copied to the device as stored. The linear
    /// kernels take q4_0, q4_1, q8_0, q4_k, q6_k, f16, bf16 and f32 with rows
    /// a multiple of 32 elements; embedding tables f32, f16 and bf16.
    pub fn upload_matrix(&self, tensor: &Tensor) -> Result<DeviceMatrix<E::Block>> {
        let &[rows, cols] = tensor.shape() else {
            let detail = format!("shape {:?} is not 2-D", tensor.shape());
            return Err(TensorError::Incompatible { op: "cuda matrix", detail });
        };
        let buffer = self.upload(tensor.bytes())?;
        Ok(DeviceMatrix { buffer, dtype: tensor.dtype(), rows, cols })
    }

    /// A RoPE table copied to the device.
    pub fn upload_rope(&self, table: &RopeTable) -> Result<DeviceRope<E::Block>> {
        Ok(DeviceRope {
            cos: self.upload(table.cos_table())?,
            sin: self.upload(table.sin_table())?,
            head_dim: table.head_dim(),
            positions: table.positions(),
        })
    }

    /// An adapter's projection copied to the device in f32.
    pub fn upload_lora(&self, pair: &LoraPair) -> Result<DeviceLora<E::Block>> {
        Ok(DeviceLora {
            a: self.upload(&pair.a_f32())?,
            b: self.upload(&pair.b_f32())?,
            rank: pair.rank(),
            in_dim: pair.in_dim(),
            out_dim: pair.out_dim(),
        })
    }

    /// Launches `entry` of `kernel` over `grid` blocks of `threads` threads
    /// with `args`, which must match the kernel's parameter list.
    fn launch(
        &self,
        kernel: &'static KernelSource,
        entry: &str,
        grid: (u32, u32),
        threads: u32,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        let mut params: Vec<*mut c_void> = args.iter().map(|arg| arg.param()).collect();
        // SAFETY: every caller passes the kernel's parameters in order and
        // of its types (device pointers as u64, int as i32, float as f32),
        // and has checked that each buffer holds what the kernel reads or
        // writes for this grid; the values outlive the call, which is all
        // the executor needs (cuLaunchKernel copies them).
        unsafe { self.executor.launch(kernel, entry, grid, threads, &mut params) }
    }

    /// RMSNorm of `rows` rows of `dim` into `out`.
    pub fn rms_norm(
        &self,
        x: &DeviceBuffer<E::Block>,
        weight: &DeviceBuffer<E::Block>,
        out: &mut DeviceBuffer<E::Block>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        x.expect_f32s(rows * dim, "rms_norm x")?;
        weight.expect_f32s(dim, "rms_norm weight")?;
        out.expect_f32s(rows * dim, "rms_norm out")?;
        if rows == 0 {
            return Ok(());
        }
        let args: [&dyn KernelArg; 5] = [&x.ptr, &weight.ptr, &out.ptr, &int(dim)?, &eps];
        self.launch(&kernels::RMS_NORM, "rms_norm", (grid(rows)?, 1), 256, &args)
    }

    /// Rotates `x` (`[positions.len(), n_heads · head_dim]`) in place, token
    /// `t` by the angles of `positions[t]`.
    pub fn rope(
        &self,
        x: &mut DeviceBuffer<E::Block>,
        table: &DeviceRope<E::Block>,
        positions: &[usize],
        n_heads: usize,
    ) -> Result<()> {
        self.rotate(x, table, positions, n_heads, 1.0)
    }

    /// Rotates by `direction` (±1) times the angles of each token's position.
    fn rotate(
        &self,
        x: &mut DeviceBuffer<E::Block>,
        table: &DeviceRope<E::Block>,
        positions: &[usize],
        n_heads: usize,
        direction: f32,
    ) -> Result<()> {
        let tokens = positions.len();
        x.expect_f32s(tokens * n_heads * table.head_dim, "rope x")?;
        if let Some(&past) = positions.iter().find(|&&p| p >= table.positions) {
            let detail = format!("position {past} past the table's {}", table.positions);
            return Err(TensorError::Incompatible { op: "cuda rope", detail });
        }
        if tokens == 0 {
            return Ok(());
        }
        let positions: Vec<i32> = positions.iter().map(|&p| int(p)).collect::<Result<_>>()?;
        let positions = self.upload(&positions)?;
        let args: [&dyn KernelArg; 7] =
            [&x.ptr, &table.cos.ptr, &table.sin.ptr, &positions.ptr, &int(n_heads)?, &int(table.head_dim)?, &direction];
        let threads = table.head_dim.div_ceil(2).next_multiple_of(32) as u32;
        self.launch(&kernels::ROPE, "rope", (grid(tokens)?, grid(n_heads)?), threads, &args)
    }

    /// `gate = silu(gate) · up` over `n` values.
    pub fn silu_mul(&self, gate: &mut DeviceBuffer<E::Block>, up: &DeviceBuffer<E::Block>, n: usize) -> Result<()> {
        gate.expect_f32s(n, "silu_mul gate")?;
        up.expect_f32s(n, "silu_mul up")?;
        if n == 0 {
            return Ok(());
        }
        let args: [&dyn KernelArg; 3] = [&gate.ptr, &up.ptr, &int(n)?];
        self.launch(&kernels::SILU_MUL, "silu_mul", (grid(n.div_ceil(256))?, 1), 256, &args)
    }

    /// The rows of `table` named by `ids`, widened to f32, into `out`.
    pub fn embedding(
        &self,
        table: &DeviceMatrix<E::Block>,
        ids: &[u32],
        out: &mut DeviceBuffer<E::Block>,
    ) -> Result<()> {
        let entry = match table.dtype {
            DType::F32 => "embedding_f32",
            DType::F16 => "embedding_f16",
            DType::BF16 => "embedding_bf16",
            dtype => return Err(TensorError::UnsupportedDType { op: "cuda embedding", dtype }),
        };
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.rows) {
            let detail = format!("token id {id} past the vocabulary of {}", table.rows);
            return Err(TensorError::Incompatible { op: "cuda embedding", detail });
        }
        out.expect_f32s(ids.len() * table.cols, "embedding out")?;
        if ids.is_empty() {
            return Ok(());
        }
        let ids_on_device = self.upload(ids)?;
        let args: [&dyn KernelArg; 4] = [&table.buffer.ptr, &ids_on_device.ptr, &out.ptr, &int(table.cols)?];
        self.launch(&kernels::EMBEDDING, entry, (grid(ids.len())?, 1), 256, &args)
    }

    /// `y[t] = W · x[t]` for `tokens` tokens (`x` is `[tokens, cols]`, `y`
    /// `[tokens, rows]`), the weights read as stored.
    pub fn linear(
        &self,
        w: &DeviceMatrix<E::Block>,
        x: &DeviceBuffer<E::Block>,
        tokens: usize,
        y: &mut DeviceBuffer<E::Block>,
    ) -> Result<()> {
        let suffix = w.linear_suffix("cuda linear")?;
        x.expect_f32s(tokens * w.cols, "linear x")?;
        y.expect_f32s(tokens * w.rows, "linear y")?;
        let row_bytes = w.dtype.bytes_for(w.cols)? as u64;
        let blocks = grid(w.rows.div_ceil(LINEAR_WARPS))?;
        let mut first = 0;
        while first < tokens {
            // More than a decode launch takes: the prefill kernel, which
            // reads the weights once per LINEAR_WIDE_TOKENS tokens.
            let (entry, count) = match tokens - first {
                left if left > LINEAR_TOKENS => (format!("linear_wide_{suffix}"), left.min(LINEAR_WIDE_TOKENS)),
                left => (format!("linear_{suffix}"), left),
            };
            let x_at = x.ptr + (first * w.cols * 4) as u64;
            let y_at = y.ptr + (first * w.rows * 4) as u64;
            let args: [&dyn KernelArg; 7] =
                [&w.buffer.ptr, &row_bytes, &x_at, &y_at, &int(w.rows)?, &int(w.cols)?, &int(count)?];
            self.launch(&kernels::LINEAR, &entry, (blocks, 1), (32 * LINEAR_WARPS) as u32, &args)?;
            first += count;
        }
        Ok(())
    }

    /// Decode attention: query row `r` of `q` (`[rows, n_head · head_dim]`)
    /// attends to `sequences[r]`'s cached positions (elements of `kv`: f32,
    /// f16 or bf16); results into `out`.
    pub fn attention_decode(
        &self,
        q: &DeviceBuffer<E::Block>,
        sequences: &[KvView<'_, E::Block>],
        shape: AttentionShape,
        kv: DType,
        out: &mut DeviceBuffer<E::Block>,
    ) -> Result<()> {
        let (entry, element) = kv_kind(kv, "attention_decode")?;
        let AttentionShape { n_head, n_kv_head, head_dim } = shape;
        let bad = |detail: String| Err(TensorError::Incompatible { op: "cuda attention_decode", detail });
        check_heads(shape, ATTENTION_MAX_HEAD, "cuda attention_decode")?;
        let rows = sequences.len();
        q.expect_f32s(rows * n_head * head_dim, "attention q")?;
        out.expect_f32s(rows * n_head * head_dim, "attention out")?;
        for (r, kv) in sequences.iter().enumerate() {
            if kv.length == 0 {
                return bad(format!("row {r} has no cached position"));
            }
            kv.keys.expect_bytes(kv.length * n_kv_head * head_dim * element, "attention keys")?;
            kv.values.expect_bytes(kv.length * n_kv_head * head_dim * element, "attention values")?;
        }
        if rows == 0 {
            return Ok(());
        }
        let keys = self.upload(&sequences.iter().map(|kv| kv.keys.ptr).collect::<Vec<u64>>())?;
        let values = self.upload(&sequences.iter().map(|kv| kv.values.ptr).collect::<Vec<u64>>())?;
        let lengths: Vec<i32> = sequences.iter().map(|kv| int(kv.length)).collect::<Result<_>>()?;
        let lengths = self.upload(&lengths)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let args: [&dyn KernelArg; 9] = [
            &q.ptr,
            &keys.ptr,
            &values.ptr,
            &lengths.ptr,
            &out.ptr,
            &int(n_head)?,
            &int(n_kv_head)?,
            &int(head_dim)?,
            &scale,
        ];
        self.launch(&kernels::ATTENTION_DECODE, &entry, (grid(rows)?, grid(n_head)?), 32 * ATTENTION_WARPS, &args)
    }

    /// Causal prefill attention for one sequence: `tokens` queries (`q`,
    /// `[tokens, n_head · head_dim]`) at positions `start..start + tokens`
    /// attend to `keys`/`values` (`[start + tokens, n_kv_head · head_dim]`
    /// elements of `kv`, f32, f16 or bf16, the cached prefix first);
    /// results into `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_prefill(
        &self,
        q: &DeviceBuffer<E::Block>,
        keys: &DeviceBuffer<E::Block>,
        values: &DeviceBuffer<E::Block>,
        start: usize,
        tokens: usize,
        shape: AttentionShape,
        kv: DType,
        out: &mut DeviceBuffer<E::Block>,
    ) -> Result<()> {
        let (entry, element) = kv_kind(kv, "attention_prefill")?;
        let AttentionShape { n_head, n_kv_head, head_dim } = shape;
        check_heads(shape, PREFILL_MAX_HEAD, "cuda attention_prefill")?;
        q.expect_f32s(tokens * n_head * head_dim, "attention q")?;
        out.expect_f32s(tokens * n_head * head_dim, "attention out")?;
        keys.expect_bytes((start + tokens) * n_kv_head * head_dim * element, "attention keys")?;
        values.expect_bytes((start + tokens) * n_kv_head * head_dim * element, "attention values")?;
        if tokens == 0 {
            return Ok(());
        }
        let scale = 1.0 / (head_dim as f32).sqrt();
        let args: [&dyn KernelArg; 10] = [
            &q.ptr,
            &keys.ptr,
            &values.ptr,
            &out.ptr,
            &int(tokens)?,
            &int(start)?,
            &int(n_head)?,
            &int(n_kv_head)?,
            &int(head_dim)?,
            &scale,
        ];
        let blocks = (grid(tokens.div_ceil(PREFILL_WARPS))?, grid(n_head)?);
        self.launch(&kernels::ATTENTION_PREFILL, &entry, blocks, (32 * PREFILL_WARPS) as u32, &args)
    }

    /// Softmax cross-entropy in place over `targets.len()` rows of `vocab`
    /// logits: returns each row's loss and leaves `scale · (softmax −
    /// onehot)` in the rows, as [`crate::cpu::softmax_cross_entropy`].
    pub fn softmax_cross_entropy(
        &self,
        logits: &mut DeviceBuffer<E::Block>,
        vocab: usize,
        targets: &[u32],
        scale: f32,
    ) -> Result<Vec<f32>> {
        if let Some(&past) = targets.iter().find(|&&t| t as usize >= vocab) {
            let detail = format!("target {past} past the vocabulary of {vocab}");
            return Err(TensorError::Incompatible { op: "cuda softmax_cross_entropy", detail });
        }
        logits.expect_f32s(targets.len() * vocab, "softmax_cross_entropy logits")?;
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let on_device = self.upload(targets)?;
        let loss = self.alloc(targets.len() * 4)?;
        let args: [&dyn KernelArg; 5] = [&logits.ptr, &on_device.ptr, &loss.ptr, &int(vocab)?, &scale];
        self.launch(&kernels::SOFTMAX_XENT, "softmax_xent", (grid(targets.len())?, 1), 256, &args)?;
        self.download(&loss, targets.len())
    }

    /// `x += y` over `n` values.
    pub fn add(&self, x: &mut DeviceBuffer<E::Block>, y: &DeviceBuffer<E::Block>, n: usize) -> Result<()> {
        x.expect_f32s(n, "add x")?;
        y.expect_f32s(n, "add y")?;
        if n == 0 {
            return Ok(());
        }
        let args: [&dyn KernelArg; 3] = [&x.ptr, &y.ptr, &int(n)?];
        self.launch(&kernels::ADD, "add_in_place", (grid(n.div_ceil(256))?, 1), 256, &args)
    }

    /// Adds `bias` (`cols` values) to each of `rows` rows of `y`.
    pub fn add_bias(
        &self,
        y: &mut DeviceBuffer<E::Block>,
        bias: &DeviceBuffer<E::Block>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        y.expect_f32s(rows * cols, "add_bias y")?;
        bias.expect_f32s(cols, "add_bias bias")?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let args: [&dyn KernelArg; 3] = [&y.ptr, &bias.ptr, &int(cols)?];
        self.launch(&kernels::ADD, "add_bias", (grid(rows)?, grid(cols.div_ceil(256))?), 256, &args)
    }

    /// Appends row `r` of `keys` and `values` (`[rows, width]` f32) to
    /// `caches[r]`: its key and value buffers of `kv` elements (f32, or f16
    /// or bf16 rounded to nearest), at position `length` (which they must
    /// have room for), for every row in one launch.
    pub fn kv_store(
        &self,
        keys: &DeviceBuffer<E::Block>,
        values: &DeviceBuffer<E::Block>,
        width: usize,
        caches: &[KvView<'_, E::Block>],
        kv: DType,
    ) -> Result<()> {
        let (entry, element) = kv_kind(kv, "kv_store")?;
        let rows = caches.len();
        keys.expect_f32s(rows * width, "kv_store keys")?;
        values.expect_f32s(rows * width, "kv_store values")?;
        for cache in caches {
            cache.keys.expect_bytes((cache.length + 1) * width * element, "kv_store key cache")?;
            cache.values.expect_bytes((cache.length + 1) * width * element, "kv_store value cache")?;
        }
        if rows == 0 {
            return Ok(());
        }
        let at = |buffer: &DeviceBuffer<E::Block>, length: usize| buffer.ptr + (length * width * element) as u64;
        let key_at = self.upload(&caches.iter().map(|kv| at(kv.keys, kv.length)).collect::<Vec<u64>>())?;
        let value_at = self.upload(&caches.iter().map(|kv| at(kv.values, kv.length)).collect::<Vec<u64>>())?;
        let args: [&dyn KernelArg; 5] = [&keys.ptr, &values.ptr, &key_at.ptr, &value_at.ptr, &int(width)?];
        self.launch(&kernels::KV_STORE, &entry, (grid(rows)?, 1), 128, &args)
    }
}

impl<B> DeviceBuffer<B> {
    /// Bytes the buffer holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn expect_bytes(&self, bytes: usize, what: &'static str) -> Result<()> {
        if bytes > self.bytes {
            let detail = format!("needs {bytes} bytes, the device buffer holds {}", self.bytes);
            return Err(TensorError::Incompatible { op: what, detail });
        }
        Ok(())
    }

    fn expect_f32s(&self, count: usize, what: &'static str) -> Result<()> {
        self.expect_bytes(count * 4, what)
    }
}

impl<B> DeviceMatrix<B> {
    /// The suffix of the linear kernels' entries for this matrix's dtype
    /// (`q4_0` for `linear_q4_0`), or why `op` cannot take it.
    fn linear_suffix(&self, op: &'static str) -> Result<&'static str> {
        let suffix = match self.dtype {
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q8_0 => "q8_0",
            DType::Q4K => "q4_k",
            DType::Q6K => "q6_k",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            dtype => return Err(TensorError::UnsupportedDType { op, dtype }),
        };
        if !self.cols.is_multiple_of(32) {
            let detail = format!("rows of {} elements (the kernels take multiples of 32)", self.cols);
            return Err(TensorError::Incompatible { op, detail });
        }
        Ok(suffix)
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The stored dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes on the device.
    pub fn bytes(&self) -> usize {
        self.buffer.bytes
    }
}

/// A kernel parameter's value, passed by address as cuLaunchKernel takes
/// it.
trait KernelArg {
    fn param(&self) -> *mut c_void;
}

impl KernelArg for u64 {
    fn param(&self) -> *mut c_void {
        self as *const u64 as *mut c_void
    }
}

impl KernelArg for i32 {
    fn param(&self) -> *mut c_void {
        self as *const i32 as *mut c_void
    }
}

impl KernelArg for f32 {
    fn param(&self) -> *mut c_void {
        self as *const f32 as *mut c_void
    }
}

/// Checks the head layout the attention kernels take: heads of a multiple
/// of 32 values, at most `max_head`, query heads a multiple of KV heads.
fn check_heads(shape: AttentionShape, max_head: usize, op: &'static str) -> Result<()> {
    let AttentionShape { n_head, n_kv_head, head_dim } = shape;
    let head_fits = head_dim.is_multiple_of(32) && head_dim <= max_head;
    if !head_fits || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
        let detail =
            format!("{n_head} heads over {n_kv_head} KV heads of {head_dim} (multiples of 32, at most {max_head})");
        return Err(TensorError::Incompatible { op, detail });
    }
    Ok(())
}

/// The cache element types the KV kernels take: `op`'s entry for `kv`
/// (`op` for f32, `op_f16` / `op_bf16` for f16 / bf16) and the element's
/// size.
fn kv_kind(kv: DType, op: &'static str) -> Result<(String, usize)> {
    match kv {
        DType::F32 => Ok((op.to_string(), 4)),
        DType::F16 => Ok((format!("{op}_f16"), 2)),
        DType::BF16 => Ok((format!("{op}_bf16"), 2)),
        dtype => Err(TensorError::UnsupportedDType { op, dtype }),
    }
}

/// `value` as a kernel's `int`.
fn int(value: usize) -> Result<i32> {
    i32::try_from(value)
        .map_err(|_| TensorError::Incompatible { op: "cuda launch", detail: format!("{value} does not fit an int") })
}

/// `value` as a grid dimension.
fn grid(value: usize) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| TensorError::Incompatible { op: "cuda launch", detail: format!("grid of {value} blocks") })
}

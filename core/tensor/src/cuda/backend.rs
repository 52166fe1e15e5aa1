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

use super::kernels::{self, KernelSource};
use super::nvrtc::KernelCache;
use super::pool::{MemoryPool, PoolBlock, PoolStats};
use crate::cpu::{AttentionShape, LoraPair, RopeTable};
use crate::{DType, Result, Tensor, TensorError};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Tokens one launch of the linear kernel takes (`LINEAR_TOKENS` in
/// linear.cu); longer inputs are split.
const LINEAR_TOKENS: usize = 8;
/// Weight rows per block of the linear kernel (`LINEAR_WARPS`).
const LINEAR_WARPS: usize = 4;
/// Warps per block of decode attention (`ATT_WARPS`).
const ATTENTION_WARPS: u32 = 4;
/// The longest head decode attention takes (`32 · ATT_MAX_PER_LANE`).
const ATTENTION_MAX_HEAD: usize = 256;
/// Rank entries per block of the LoRA shrink (`LORA_WARPS`).
const LORA_WARPS: usize = 8;

/// True when the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda by its candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A driver error as tailor's; out-of-memory keeps its own variant so the
/// pool can release its cache and retry.
fn driver(error: DriverError) -> TensorError {
    if error.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        TensorError::DeviceOutOfMemory { requested: 0, in_use: 0, budget: 0 }
    } else {
        TensorError::Cuda(error.to_string())
    }
}

/// One CUDA device owned by this process.
pub struct CudaBackend {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: u32,
    pool: MemoryPool<CudaSlice<u8>>,
    cache: KernelCache,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

/// Device memory from the pool, holding `bytes` bytes.
pub struct DeviceBuffer {
    block: PoolBlock<CudaSlice<u8>>,
    bytes: usize,
    ptr: u64,
}

/// A weight matrix on the device, `[rows, cols]`, in the dtype it was stored
/// in (GGUF blocks stay blocks).
pub struct DeviceMatrix {
    buffer: DeviceBuffer,
    dtype: DType,
    rows: usize,
    cols: usize,
}

/// A RoPE table on the device.
pub struct DeviceRope {
    cos: DeviceBuffer,
    sin: DeviceBuffer,
    head_dim: usize,
    positions: usize,
}

/// One adapted projection on the device: `A` `[rank, in]` and `B`
/// `[out, rank]` in f32.
pub struct DeviceLora {
    a: DeviceBuffer,
    b: DeviceBuffer,
    rank: usize,
    in_dim: usize,
    out_dim: usize,
}

/// One decode row's cached keys and values (`[length, n_kv_head ·
/// head_dim]` f32 each) and how many positions they hold.
pub struct KvView<'a> {
    /// Keys.
    pub keys: &'a DeviceBuffer,
    /// Values.
    pub values: &'a DeviceBuffer,
    /// Positions to attend to (at least 1).
    pub length: usize,
}

impl CudaBackend {
    /// Device `ordinal`, with a pool of at most `budget` bytes. Fails with
    /// [`TensorError::DeviceUnavailable`] when there is no driver or no such
    /// device (the caller falls back to the CPU).
    pub fn new(ordinal: usize, budget: usize) -> Result<CudaBackend> {
        let unavailable = |why: String| TensorError::DeviceUnavailable(format!("cuda:{ordinal}"), why);
        if !driver_present() {
            return Err(unavailable("no CUDA driver (libcuda.so) on this machine".into()));
        }
        let count = CudaContext::device_count().map_err(|e| unavailable(e.to_string()))?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!("the machine has {count} CUDA device(s)")));
        }
        let context = CudaContext::new(ordinal).map_err(|e| unavailable(e.to_string()))?;
        let (major, minor) = context.compute_capability().map_err(driver)?;
        let stream = context.default_stream();
        Ok(CudaBackend {
            context,
            stream,
            arch: (major * 10 + minor) as u32,
            pool: MemoryPool::new(budget),
            cache: KernelCache::new(KernelCache::default_dir()),
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// The device's name and compute capability, for logs.
    pub fn describe(&self) -> String {
        let name = self.context.name().unwrap_or_else(|_| "unknown device".into());
        format!("{name} (sm_{})", self.arch)
    }

    /// The device's architecture (90 for sm_90).
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// What the memory pool holds.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Waits for everything issued so far.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver)
    }

    /// An uninitialised buffer of `bytes` bytes from the pool.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        let stream = &self.stream;
        // SAFETY: the memory is uninitialised device memory; every op
        // writes a buffer before reading it, and a buffer read back by
        // `download` was written by an upload or a kernel first.
        let mut block = self.pool.take(bytes, |class| unsafe { stream.alloc::<u8>(class) }.map_err(driver))?;
        let ptr = block.block_mut().device_ptr(stream).0;
        Ok(DeviceBuffer { block, bytes, ptr })
    }

    /// `values` copied to a new device buffer.
    pub fn upload<T: bytemuck::Pod>(&self, values: &[T]) -> Result<DeviceBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let mut buffer = self.alloc(bytes.len().max(1))?;
        buffer.bytes = bytes.len();
        if !bytes.is_empty() {
            let mut target = buffer.block.block_mut().slice_mut(..bytes.len());
            self.stream.memcpy_htod(bytes, &mut target).map_err(driver)?;
        }
        Ok(buffer)
    }

    /// The first `count` values of `buffer`, once every op issued before has
    /// finished.
    pub fn download<T: bytemuck::Pod>(&self, buffer: &DeviceBuffer, count: usize) -> Result<Vec<T>> {
        let bytes = count * std::mem::size_of::<T>();
        buffer.expect_bytes(bytes, "download")?;
        let mut values = vec![T::zeroed(); count];
        if bytes > 0 {
            let host: &mut [u8] = bytemuck::cast_slice_mut(&mut values);
            self.stream.memcpy_dtoh(&buffer.block.block().slice(..bytes), host).map_err(driver)?;
        }
        self.synchronize()?;
        Ok(values)
    }

    /// `from`'s bytes copied into `to`, on the device.
    pub fn copy(&self, from: &DeviceBuffer, to: &mut DeviceBuffer) -> Result<()> {
        to.expect_bytes(from.bytes, "copy")?;
        let source = from.block.block().slice(..from.bytes);
        let mut target = to.block.block_mut().slice_mut(..from.bytes);
        self.stream.memcpy_dtod(&source, &mut target).map_err(driver)
    }

    /// A 2-D weight matrix copied to the device as stored. The linear
    /// kernels take q4_0, q4_1, q8_0, q4_k, q6_k, f16, bf16 and f32 with rows
    /// a multiple of 32 elements; embedding tables f32, f16 and bf16.
    pub fn upload_matrix(&self, tensor: &Tensor) -> Result<DeviceMatrix> {
        let &[rows, cols] = tensor.shape() else {
            return Err(TensorError::Incompatible {
                op: "cuda matrix",
                detail: format!("shape {:?} is not 2-D", tensor.shape()),
            });
        };
        let buffer = self.upload(tensor.bytes())?;
        Ok(DeviceMatrix { buffer, dtype: tensor.dtype(), rows, cols })
    }

    /// A RoPE table copied to the device.
    pub fn upload_rope(&self, table: &RopeTable) -> Result<DeviceRope> {
        Ok(DeviceRope {
            cos: self.upload(table.cos_table())?,
            sin: self.upload(table.sin_table())?,
            head_dim: table.head_dim(),
            positions: table.positions(),
        })
    }

    /// An adapter's projection copied to the device in f32.
    pub fn upload_lora(&self, pair: &LoraPair) -> Result<DeviceLora> {
        Ok(DeviceLora {
            a: self.upload(&pair.a_f32())?,
            b: self.upload(&pair.b_f32())?,
            rank: pair.rank(),
            in_dim: pair.in_dim(),
            out_dim: pair.out_dim(),
        })
    }

    /// The compiled kernel `entry` of `kernel`, compiled (or read from the
    /// disk cache) and loaded at first use.
    fn function(&self, kernel: &'static KernelSource, entry: &str) -> Result<CudaFunction> {
        let mut modules = self.modules.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let module = match modules.get(kernel.name) {
            Some(module) => Arc::clone(module),
            None => {
                let cubin = self.cache.cubin(kernel, self.arch)?;
                let module = self.context.load_module(Ptx::from_binary(cubin)).map_err(driver)?;
                modules.insert(kernel.name, Arc::clone(&module));
                module
            }
        };
        module.load_function(entry).map_err(driver)
    }

    /// Launches `entry` of `kernel` over `grid` blocks of `block` threads
    /// with `args`, which must match the kernel's parameter list.
    fn launch(
        &self,
        kernel: &'static KernelSource,
        entry: &str,
        grid: (u32, u32),
        block: u32,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        let function = self.function(kernel, entry)?;
        let config = LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        let mut builder = self.stream.launch_builder(&function);
        for arg in args {
            arg.push(&mut builder);
        }
        // SAFETY: every caller passes the kernel's parameters in order and
        // of its types (device pointers as u64, int as i32, float as f32),
        // and has checked that each buffer holds what the kernel reads or
        // writes for this grid.
        unsafe { builder.launch(config) }.map_err(driver)?;
        Ok(())
    }

    /// RMSNorm of `rows` rows of `dim` into `out`.
    pub fn rms_norm(
        &self,
        x: &DeviceBuffer,
        weight: &DeviceBuffer,
        out: &mut DeviceBuffer,
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
    pub fn rope(&self, x: &mut DeviceBuffer, table: &DeviceRope, positions: &[usize], n_heads: usize) -> Result<()> {
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
        let args: [&dyn KernelArg; 6] =
            [&x.ptr, &table.cos.ptr, &table.sin.ptr, &positions.ptr, &int(n_heads)?, &int(table.head_dim)?];
        let threads = table.head_dim.div_ceil(2).next_multiple_of(32) as u32;
        self.launch(&kernels::ROPE, "rope", (grid(tokens)?, grid(n_heads)?), threads, &args)
    }

    /// `gate = silu(gate) · up` over `n` values.
    pub fn silu_mul(&self, gate: &mut DeviceBuffer, up: &DeviceBuffer, n: usize) -> Result<()> {
        gate.expect_f32s(n, "silu_mul gate")?;
        up.expect_f32s(n, "silu_mul up")?;
        if n == 0 {
            return Ok(());
        }
        let args: [&dyn KernelArg; 3] = [&gate.ptr, &up.ptr, &int(n)?];
        self.launch(&kernels::SILU_MUL, "silu_mul", (grid(n.div_ceil(256))?, 1), 256, &args)
    }

    /// The rows of `table` named by `ids`, widened to f32, into `out`.
    pub fn embedding(&self, table: &DeviceMatrix, ids: &[u32], out: &mut DeviceBuffer) -> Result<()> {
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
    pub fn linear(&self, w: &DeviceMatrix, x: &DeviceBuffer, tokens: usize, y: &mut DeviceBuffer) -> Result<()> {
        let entry = match w.dtype {
            DType::Q4_0 => "linear_q4_0",
            DType::Q4_1 => "linear_q4_1",
            DType::Q8_0 => "linear_q8_0",
            DType::Q4K => "linear_q4_k",
            DType::Q6K => "linear_q6_k",
            DType::F16 => "linear_f16",
            DType::BF16 => "linear_bf16",
            DType::F32 => "linear_f32",
            dtype => return Err(TensorError::UnsupportedDType { op: "cuda linear", dtype }),
        };
        if !w.cols.is_multiple_of(32) {
            let detail = format!("rows of {} elements (the kernel takes multiples of 32)", w.cols);
            return Err(TensorError::Incompatible { op: "cuda linear", detail });
        }
        x.expect_f32s(tokens * w.cols, "linear x")?;
        y.expect_f32s(tokens * w.rows, "linear y")?;
        let row_bytes = w.dtype.bytes_for(w.cols)? as u64;
        let blocks = grid(w.rows.div_ceil(LINEAR_WARPS))?;
        for first in (0..tokens).step_by(LINEAR_TOKENS) {
            let count = (tokens - first).min(LINEAR_TOKENS);
            let x_at = x.ptr + (first * w.cols * 4) as u64;
            let y_at = y.ptr + (first * w.rows * 4) as u64;
            let args: [&dyn KernelArg; 7] =
                [&w.buffer.ptr, &row_bytes, &x_at, &y_at, &int(w.rows)?, &int(w.cols)?, &int(count)?];
            self.launch(&kernels::LINEAR, entry, (blocks, 1), (32 * LINEAR_WARPS) as u32, &args)?;
        }
        Ok(())
    }

    /// Decode attention: query row `r` of `q` (`[rows, n_head · head_dim]`)
    /// attends to `sequences[r]`'s cached positions; results into `out`.
    pub fn attention_decode(
        &self,
        q: &DeviceBuffer,
        sequences: &[KvView<'_>],
        shape: AttentionShape,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        let AttentionShape { n_head, n_kv_head, head_dim } = shape;
        let bad = |detail: String| Err(TensorError::Incompatible { op: "cuda attention_decode", detail });
        if !head_dim.is_multiple_of(32)
            || head_dim > ATTENTION_MAX_HEAD
            || n_kv_head == 0
            || !n_head.is_multiple_of(n_kv_head)
        {
            return bad(format!(
                "{n_head} heads over {n_kv_head} KV heads of {head_dim} (multiples of 32, at most 256)"
            ));
        }
        let rows = sequences.len();
        q.expect_f32s(rows * n_head * head_dim, "attention q")?;
        out.expect_f32s(rows * n_head * head_dim, "attention out")?;
        for (r, kv) in sequences.iter().enumerate() {
            if kv.length == 0 {
                return bad(format!("row {r} has no cached position"));
            }
            kv.keys.expect_f32s(kv.length * n_kv_head * head_dim, "attention keys")?;
            kv.values.expect_f32s(kv.length * n_kv_head * head_dim, "attention values")?;
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
        self.launch(
            &kernels::ATTENTION_DECODE,
            "attention_decode",
            (grid(rows)?, grid(n_head)?),
            32 * ATTENTION_WARPS,
            &args,
        )
    }

    /// Adds each row's LoRA delta `B·(A·x[r])` to `y[r]` (`x` is
    /// `[rows, in]`, `y` `[rows, out]`); `adapters[r]` is row r's adapter
    /// projection or none. Rows of different adapters share one launch.
    pub fn lora(&self, x: &DeviceBuffer, adapters: &[Option<&DeviceLora>], y: &mut DeviceBuffer) -> Result<()> {
        let Some(first) = adapters.iter().flatten().next() else { return Ok(()) };
        let (in_dim, out_dim, rows) = (first.in_dim, first.out_dim, adapters.len());
        if adapters.iter().flatten().any(|a| a.in_dim != in_dim || a.out_dim != out_dim) {
            let detail = format!("adapters of one call must all be {in_dim} in, {out_dim} out");
            return Err(TensorError::Incompatible { op: "cuda lora", detail });
        }
        x.expect_f32s(rows * in_dim, "lora x")?;
        y.expect_f32s(rows * out_dim, "lora y")?;
        let max_rank = adapters.iter().flatten().map(|a| a.rank).max().unwrap_or(1);
        let pointers =
            |matrix: fn(&DeviceLora) -> u64| -> Vec<u64> { adapters.iter().map(|a| a.map_or(0, matrix)).collect() };
        let a_ptrs = self.upload(&pointers(|a| a.a.ptr))?;
        let b_ptrs = self.upload(&pointers(|a| a.b.ptr))?;
        let ranks: Vec<i32> = adapters.iter().map(|a| int(a.map_or(0, |a| a.rank))).collect::<Result<_>>()?;
        let ranks = self.upload(&ranks)?;
        let low = self.alloc(rows * max_rank * 4)?;
        let shrink: [&dyn KernelArg; 6] = [&x.ptr, &a_ptrs.ptr, &ranks.ptr, &low.ptr, &int(in_dim)?, &int(max_rank)?];
        let shrink_grid = (grid(rows)?, grid(max_rank.div_ceil(LORA_WARPS))?);
        self.launch(&kernels::LORA, "lora_shrink", shrink_grid, (32 * LORA_WARPS) as u32, &shrink)?;
        let expand: [&dyn KernelArg; 6] = [&low.ptr, &b_ptrs.ptr, &ranks.ptr, &y.ptr, &int(out_dim)?, &int(max_rank)?];
        self.launch(&kernels::LORA, "lora_expand", (grid(rows)?, grid(out_dim.div_ceil(256))?), 256, &expand)
    }
}

impl DeviceBuffer {
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

impl DeviceMatrix {
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

/// A kernel parameter: something the launch builder takes by reference.
trait KernelArg {
    fn push<'a>(&'a self, builder: &mut cudarc::driver::LaunchArgs<'a>);
}

impl KernelArg for u64 {
    fn push<'a>(&'a self, builder: &mut cudarc::driver::LaunchArgs<'a>) {
        builder.arg(self);
    }
}

impl KernelArg for i32 {
    fn push<'a>(&'a self, builder: &mut cudarc::driver::LaunchArgs<'a>) {
        builder.arg(self);
    }
}

impl KernelArg for f32 {
    fn push<'a>(&'a self, builder: &mut cudarc::driver::LaunchArgs<'a>) {
        builder.arg(self);
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

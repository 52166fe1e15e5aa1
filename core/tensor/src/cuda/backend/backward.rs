//! Training's backward ops on the device, each the twin of a CPU op in
//! `crate::cpu`'s backward.rs (or of a [`crate::cpu::RopeTable`] /
//! embedding step) that its test compares it with: the input gradient of a
//! linear layer on weights as stored, a weight's and an adapter's
//! gradients through a small strided f32 product, causal attention's
//! backward over packed sequences, and RoPE's, SwiGLU's, RMSNorm's and the
//! embedding's. Like the CPU's, each sums in a fixed order: the same
//! inputs give the same bits.

use super::check_heads;
use super::{grid, int, Backend, DeviceBuffer, DeviceLora, DeviceMatrix, DeviceRope, Executor, KernelArg};
use crate::cpu::AttentionShape;
use crate::cuda::kernels;
use crate::{Result, TensorError};

/// Input units per block of the linear backward (`LB_UNITS` in linear.cu).
const BACKWARD_UNITS: usize = 8;
/// Tokens per block of the linear backward (`LB_TOKENS`).
const BACKWARD_TOKENS: usize = 8;
/// Outputs per side of a tile of the f32 product (`MM_TILE`).
const MATMUL_TILE: usize = 16;
/// Queries (or keys) per block of the attention backward (`AB_WARPS`).
const ATTENTION_BACKWARD_WARPS: usize = 4;
/// The longest head the attention backward takes (`AB_MAX_HEAD`).
const ATTENTION_BACKWARD_MAX_HEAD: usize = 128;

/// A read-only f32 matrix operand on the device: `rows × cols`, stored
/// row-major, or stored as its transpose when `transposed` (the device
/// twin of [`crate::cpu::MatRef`]).
pub struct DeviceMatRef<'a, B> {
    buffer: &'a DeviceBuffer<B>,
    rows: usize,
    cols: usize,
    transposed: bool,
}

// Written out: a derive would ask `B: Copy`, and only the reference is
// copied.
impl<B> Clone for DeviceMatRef<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for DeviceMatRef<'_, B> {}

impl<'a, B> DeviceMatRef<'a, B> {
    /// The `rows × cols` row-major matrix in `buffer`.
    pub fn new(buffer: &'a DeviceBuffer<B>, rows: usize, cols: usize) -> DeviceMatRef<'a, B> {
        DeviceMatRef { buffer, rows, cols, transposed: false }
    }

    /// The transpose (no copy).
    pub fn t(self) -> DeviceMatRef<'a, B> {
        DeviceMatRef { rows: self.cols, cols: self.rows, transposed: !self.transposed, ..self }
    }

    /// (row stride, column stride) of the logical matrix, in values.
    fn strides(&self) -> (u64, u64) {
        match self.transposed {
            false => (self.cols as u64, 1),
            true => (1, self.rows as u64),
        }
    }
}

impl<E: Executor> Backend<E> {
    /// Rotates `x` back by the angles [`Backend::rope`] rotated it by: the
    /// gradient of rotated vectors becomes that of the unrotated ones
    /// ([`crate::cpu::RopeTable::apply_inverse`]).
    pub fn rope_backward(
        &self,
        x: &mut DeviceBuffer<E::Block>,
        table: &DeviceRope<E::Block>,
        positions: &[usize],
        n_heads: usize,
    ) -> Result<()> {
        self.rotate(x, table, positions, n_heads, -1.0)
    }

    /// `dtable[ids[t]] += dy[t]` (`dtable` is the f32 gradient of a
    /// `[vocab, dim]` table): the backward of [`Backend::embedding`].
    pub fn embedding_backward(
        &self,
        dy: &DeviceBuffer<E::Block>,
        ids: &[u32],
        dtable: &mut DeviceBuffer<E::Block>,
        vocab: usize,
        dim: usize,
    ) -> Result<()> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            let detail = format!("token id {id} past the vocabulary of {vocab}");
            return Err(TensorError::Incompatible { op: "cuda embedding_backward", detail });
        }
        dy.expect_f32s(ids.len() * dim, "embedding_backward dy")?;
        dtable.expect_f32s(vocab * dim, "embedding_backward dtable")?;
        if ids.is_empty() || dim == 0 {
            return Ok(());
        }
        let ids_on_device = self.upload(ids)?;
        let args: [&dyn KernelArg; 5] = [&dy.ptr, &ids_on_device.ptr, &dtable.ptr, &int(ids.len())?, &int(dim)?];
        self.launch(&kernels::EMBEDDING, "embedding_backward", (grid(dim.div_ceil(256))?, 1), 256, &args)
    }

    /// `dx += dy·W`: the input gradient of [`Backend::linear`] for `tokens`
    /// rows (`dy` is `[tokens, rows]`, `dx` `[tokens, cols]`), the weights
    /// read as stored ([`crate::cpu::linear_backward_input`]).
    pub fn linear_backward_input(
        &self,
        w: &DeviceMatrix<E::Block>,
        dy: &DeviceBuffer<E::Block>,
        tokens: usize,
        dx: &mut DeviceBuffer<E::Block>,
    ) -> Result<()> {
        let suffix = w.linear_suffix("cuda linear_backward_input")?;
        dy.expect_f32s(tokens * w.rows, "linear_backward dy")?;
        dx.expect_f32s(tokens * w.cols, "linear_backward dx")?;
        if tokens == 0 || w.rows == 0 {
            return Ok(());
        }
        let row_bytes = w.dtype.bytes_for(w.cols)? as u64;
        let args: [&dyn KernelArg; 7] =
            [&w.buffer.ptr, &row_bytes, &dy.ptr, &dx.ptr, &int(w.rows)?, &int(w.cols)?, &int(tokens)?];
        let blocks = (grid((w.cols / 32).div_ceil(BACKWARD_UNITS))?, grid(tokens.div_ceil(BACKWARD_TOKENS))?);
        let entry = format!("linear_backward_{suffix}");
        self.launch(&kernels::LINEAR, &entry, blocks, (32 * BACKWARD_UNITS) as u32, &args)
    }

    /// `c = alpha·a·b`, or `c += alpha·a·b` when `accumulate` (`c` is
    /// row-major `a.rows × b.cols`, f32).
    pub fn matmul(
        &self,
        c: &mut DeviceBuffer<E::Block>,
        a: DeviceMatRef<'_, E::Block>,
        b: DeviceMatRef<'_, E::Block>,
        alpha: f32,
        accumulate: bool,
    ) -> Result<()> {
        if a.cols != b.rows {
            let detail = format!("{}×{} times {}×{}", a.rows, a.cols, b.rows, b.cols);
            return Err(TensorError::Incompatible { op: "cuda matmul", detail });
        }
        a.buffer.expect_f32s(a.rows * a.cols, "matmul a")?;
        b.buffer.expect_f32s(b.rows * b.cols, "matmul b")?;
        c.expect_f32s(a.rows * b.cols, "matmul c")?;
        if a.rows == 0 || b.cols == 0 {
            return Ok(());
        }
        let ((a_row, a_col), (b_row, b_col)) = (a.strides(), b.strides());
        let args: [&dyn KernelArg; 12] = [
            &a.buffer.ptr,
            &a_row,
            &a_col,
            &b.buffer.ptr,
            &b_row,
            &b_col,
            &c.ptr,
            &int(a.rows)?,
            &int(b.cols)?,
            &int(a.cols)?,
            &alpha,
            &i32::from(accumulate),
        ];
        let blocks = (grid(b.cols.div_ceil(MATMUL_TILE))?, grid(a.rows.div_ceil(MATMUL_TILE))?);
        self.launch(&kernels::MATMUL, "matmul_f32", blocks, (MATMUL_TILE * MATMUL_TILE) as u32, &args)
    }

    /// `dw += dyᵀ·x`: the weight gradient of `y = x·Wᵀ` (`dw` is `[out, in]`
    /// f32, `dy` `[tokens, out]`, `x` `[tokens, in]`).
    pub fn linear_backward_weight(
        &self,
        dy: &DeviceBuffer<E::Block>,
        x: &DeviceBuffer<E::Block>,
        tokens: usize,
        dw: &mut DeviceBuffer<E::Block>,
        [out_dim, in_dim]: [usize; 2],
    ) -> Result<()> {
        let (dy, x) = (DeviceMatRef::new(dy, tokens, out_dim), DeviceMatRef::new(x, tokens, in_dim));
        self.matmul(dw, dy.t(), x, 1.0, true)
    }

    /// The backward of a LoRA delta `y += scaling·(x·Aᵀ)·Bᵀ` on `tokens`
    /// rows, with `lora`'s `A` and `B` as uploaded: adds to `da` (`[rank,
    /// in]`), `db` (`[out, rank]`) and `dx`
    /// ([`crate::cpu::LoraBackward`]).
    #[allow(clippy::too_many_arguments)]
    pub fn lora_backward(
        &self,
        lora: &DeviceLora<E::Block>,
        scaling: f32,
        x: &DeviceBuffer<E::Block>,
        dy: &DeviceBuffer<E::Block>,
        tokens: usize,
        da: &mut DeviceBuffer<E::Block>,
        db: &mut DeviceBuffer<E::Block>,
        dx: &mut DeviceBuffer<E::Block>,
    ) -> Result<()> {
        let (rank, in_dim, out_dim) = (lora.rank, lora.in_dim, lora.out_dim);
        let (a, b) = (DeviceMatRef::new(&lora.a, rank, in_dim), DeviceMatRef::new(&lora.b, out_dim, rank));
        let (x, dy) = (DeviceMatRef::new(x, tokens, in_dim), DeviceMatRef::new(dy, tokens, out_dim));
        let mut low = self.alloc(tokens * rank * 4)?;
        let mut low_grad = self.alloc(tokens * rank * 4)?;
        self.matmul(&mut low, x, a.t(), 1.0, false)?;
        self.matmul(db, dy.t(), DeviceMatRef::new(&low, tokens, rank), scaling, true)?;
        self.matmul(&mut low_grad, dy, b, scaling, false)?;
        let low_grad = DeviceMatRef::new(&low_grad, tokens, rank);
        self.matmul(da, low_grad.t(), x, 1.0, true)?;
        self.matmul(dx, low_grad, a, 1.0, true)
    }

    /// The backward of causal attention over sequences packed back to back
    /// (`lengths`; each starts at position 0): `q` (after RoPE) and `dout`
    /// are `[tokens, n_head · head_dim]`, `k` (after RoPE) and `v`
    /// `[tokens, n_kv_head · head_dim]`. Overwrites `dq`, `dk` and `dv`
    /// ([`crate::cpu::causal_attention_backward`]).
    #[allow(clippy::too_many_arguments)]
    pub fn causal_attention_backward(
        &self,
        [q, k, v, dout]: [&DeviceBuffer<E::Block>; 4],
        shape: AttentionShape,
        lengths: &[usize],
        dq: &mut DeviceBuffer<E::Block>,
        dk: &mut DeviceBuffer<E::Block>,
        dv: &mut DeviceBuffer<E::Block>,
    ) -> Result<()> {
        let AttentionShape { n_head, n_kv_head, head_dim } = shape;
        check_heads(shape, ATTENTION_BACKWARD_MAX_HEAD, "cuda attention_backward")?;
        let tokens: usize = lengths.iter().sum();
        for (buffer, what) in [(q, "q"), (dout, "dout"), (&*dq, "dq")] {
            buffer.expect_f32s(tokens * n_head * head_dim, what)?;
        }
        for (buffer, what) in [(k, "k"), (v, "v"), (&*dk, "dk"), (&*dv, "dv")] {
            buffer.expect_f32s(tokens * n_kv_head * head_dim, what)?;
        }
        if tokens == 0 {
            return Ok(());
        }
        let (mut first, mut end) = (Vec::with_capacity(tokens), Vec::with_capacity(tokens));
        let mut start = 0;
        for &length in lengths {
            first.extend(std::iter::repeat_n(int(start)?, length));
            end.extend(std::iter::repeat_n(int(start + length)?, length));
            start += length;
        }
        let (first, end) = (self.upload(&first)?, self.upload(&end)?);
        let lse = self.alloc(tokens * n_head * 4)?;
        let row_dot = self.alloc(tokens * n_head * 4)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (tokens_arg, heads, kv_heads, head) = (int(tokens)?, int(n_head)?, int(n_kv_head)?, int(head_dim)?);
        let threads = (32 * ATTENTION_BACKWARD_WARPS) as u32;
        let query_blocks = grid(tokens.div_ceil(ATTENTION_BACKWARD_WARPS))?;
        let dq_args: [&dyn KernelArg; 13] = [
            &q.ptr,
            &k.ptr,
            &v.ptr,
            &dout.ptr,
            &first.ptr,
            &dq.ptr,
            &lse.ptr,
            &row_dot.ptr,
            &tokens_arg,
            &heads,
            &kv_heads,
            &head,
            &scale,
        ];
        let blocks = (query_blocks, grid(n_head)?);
        self.launch(&kernels::ATTENTION_BACKWARD, "attention_backward_dq", blocks, threads, &dq_args)?;
        let dkv_args: [&dyn KernelArg; 14] = [
            &q.ptr,
            &k.ptr,
            &v.ptr,
            &dout.ptr,
            &end.ptr,
            &lse.ptr,
            &row_dot.ptr,
            &dk.ptr,
            &dv.ptr,
            &tokens_arg,
            &heads,
            &kv_heads,
            &head,
            &scale,
        ];
        let blocks = (query_blocks, grid(n_kv_head)?);
        self.launch(&kernels::ATTENTION_BACKWARD, "attention_backward_dkv", blocks, threads, &dkv_args)
    }

    /// The backward of [`Backend::silu_mul`]: `dgate` and `dup`
    /// (overwritten) from the pre-activations and `dact`, over `n` values.
    pub fn silu_mul_backward(
        &self,
        gate: &DeviceBuffer<E::Block>,
        up: &DeviceBuffer<E::Block>,
        dact: &DeviceBuffer<E::Block>,
        dgate: &mut DeviceBuffer<E::Block>,
        dup: &mut DeviceBuffer<E::Block>,
        n: usize,
    ) -> Result<()> {
        for (buffer, what) in [(gate, "gate"), (up, "up"), (dact, "dact"), (&*dgate, "dgate"), (&*dup, "dup")] {
            buffer.expect_f32s(n, what)?;
        }
        if n == 0 {
            return Ok(());
        }
        let args: [&dyn KernelArg; 6] = [&gate.ptr, &up.ptr, &dact.ptr, &dgate.ptr, &dup.ptr, &int(n)?];
        self.launch(&kernels::SILU_MUL, "silu_mul_backward", (grid(n.div_ceil(256))?, 1), 256, &args)
    }

    /// The backward of [`Backend::rms_norm`] on `rows` rows of `dim`:
    /// `dx += ∂/∂x`, and `dweight += Σ_rows dy·x̂` when given (summed in
    /// row order, deterministic).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_backward(
        &self,
        x: &DeviceBuffer<E::Block>,
        weight: &DeviceBuffer<E::Block>,
        dy: &DeviceBuffer<E::Block>,
        dx: &mut DeviceBuffer<E::Block>,
        dweight: Option<&mut DeviceBuffer<E::Block>>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        for (buffer, count, what) in
            [(x, rows * dim, "x"), (dy, rows * dim, "dy"), (&*dx, rows * dim, "dx"), (weight, dim, "weight")]
        {
            buffer.expect_f32s(count, what)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let inv_rms = self.alloc(rows * 4)?;
        let args: [&dyn KernelArg; 7] = [&x.ptr, &weight.ptr, &dy.ptr, &dx.ptr, &inv_rms.ptr, &int(dim)?, &eps];
        self.launch(&kernels::RMS_NORM, "rms_norm_backward", (grid(rows)?, 1), 256, &args)?;
        let Some(dweight) = dweight else { return Ok(()) };
        dweight.expect_f32s(dim, "dweight")?;
        let args: [&dyn KernelArg; 6] = [&x.ptr, &dy.ptr, &inv_rms.ptr, &dweight.ptr, &int(rows)?, &int(dim)?];
        self.launch(&kernels::RMS_NORM, "rms_norm_backward_weight", (grid(dim.div_ceil(256))?, 1), 256, &args)
    }
}

//! LoRA deltas on the device, rows of different adapters in one launch:
//! a row at a time (BGMV, decode batches) or tiles of consecutive rows of
//! one adapter (SGMV, prompts); both sum in the same order, so they give
//! the same bits (the CPU twin: [`crate::cpu::lora_deltas`]).

use super::{grid, int, Backend, DeviceBuffer, DeviceLora, Executor, KernelArg, LORA_WARPS};
use crate::cuda::kernels;
use crate::{Result, TensorError};

/// Rows per tile of the segmented kernels (`LORA_TILE` in lora.cu).
const LORA_TILE: usize = 16;

impl<E: Executor> Backend<E> {
    /// Adds each row's LoRA delta `B·(A·x[r])` to `y[r]` (`x` is
    /// `[rows, in]`, `y` `[rows, out]`); `adapters[r]` is row r's adapter
    /// projection or none. Rows of different adapters share one launch;
    /// consecutive rows of one adapter (a prompt) are taken a tile at a
    /// time (SGMV), others a row at a time (BGMV). Both give the same bits.
    pub fn lora(
        &self,
        x: &DeviceBuffer<E::Block>,
        adapters: &[Option<&DeviceLora<E::Block>>],
        y: &mut DeviceBuffer<E::Block>,
    ) -> Result<()> {
        let runs = adapters.windows(2).any(|pair| match (pair[0], pair[1]) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            _ => false,
        });
        let launch = if runs { LoraLaunch::Segments } else { LoraLaunch::Rows };
        self.lora_on(launch, x, adapters, y)
    }

    /// [`Backend::lora`] launched the way `launch` says (tests run both).
    pub fn lora_on(
        &self,
        launch: LoraLaunch,
        x: &DeviceBuffer<E::Block>,
        adapters: &[Option<&DeviceLora<E::Block>>],
        y: &mut DeviceBuffer<E::Block>,
    ) -> Result<()> {
        let Some(first) = adapters.iter().flatten().next() else { return Ok(()) };
        let (in_dim, out_dim, rows) = (first.in_dim, first.out_dim, adapters.len());
        if adapters.iter().flatten().any(|a| a.in_dim != in_dim || a.out_dim != out_dim) {
            let detail = format!("adapters of one call must all be {in_dim} in, {out_dim} out");
            return Err(TensorError::Incompatible { op: "cuda lora", detail });
        }
        x.expect_f32s(rows * in_dim, "lora x")?;
        y.expect_f32s(rows * out_dim, "lora y")?;
        let max_rank = adapters.iter().flatten().map(|a| a.rank).max().unwrap_or(1);
        let low = self.alloc(rows * max_rank * 4)?;
        let dims = LoraDims { in_dim, out_dim, max_rank };
        match launch {
            LoraLaunch::Rows => self.lora_rows(x, adapters, &low, y, dims),
            LoraLaunch::Segments => self.lora_segments(x, adapters, &low, y, dims),
        }
    }

    /// BGMV: one row per block of the shrink and of the expand.
    fn lora_rows(
        &self,
        x: &DeviceBuffer<E::Block>,
        adapters: &[Option<&DeviceLora<E::Block>>],
        low: &DeviceBuffer<E::Block>,
        y: &mut DeviceBuffer<E::Block>,
        LoraDims { in_dim, out_dim, max_rank }: LoraDims,
    ) -> Result<()> {
        let rows = adapters.len();
        let pointers = |matrix: fn(&DeviceLora<E::Block>) -> u64| -> Vec<u64> {
            adapters.iter().map(|a| a.map_or(0, matrix)).collect()
        };
        let a_ptrs = self.upload(&pointers(|a| a.a.ptr))?;
        let b_ptrs = self.upload(&pointers(|a| a.b.ptr))?;
        let ranks: Vec<i32> = adapters.iter().map(|a| int(a.map_or(0, |a| a.rank))).collect::<Result<_>>()?;
        let ranks = self.upload(&ranks)?;
        let shrink: [&dyn KernelArg; 6] = [&x.ptr, &a_ptrs.ptr, &ranks.ptr, &low.ptr, &int(in_dim)?, &int(max_rank)?];
        let shrink_grid = (grid(rows)?, grid(max_rank.div_ceil(LORA_WARPS))?);
        self.launch(&kernels::LORA, "lora_shrink", shrink_grid, (32 * LORA_WARPS) as u32, &shrink)?;
        let expand: [&dyn KernelArg; 6] = [&low.ptr, &b_ptrs.ptr, &ranks.ptr, &y.ptr, &int(out_dim)?, &int(max_rank)?];
        self.launch(&kernels::LORA, "lora_expand", (grid(rows)?, grid(out_dim.div_ceil(256))?), 256, &expand)
    }

    /// SGMV: tiles of up to `LORA_TILE` consecutive rows of one adapter.
    fn lora_segments(
        &self,
        x: &DeviceBuffer<E::Block>,
        adapters: &[Option<&DeviceLora<E::Block>>],
        low: &DeviceBuffer<E::Block>,
        y: &mut DeviceBuffer<E::Block>,
        LoraDims { in_dim, out_dim, max_rank }: LoraDims,
    ) -> Result<()> {
        let tiles = lora_tiles(adapters);
        if tiles.is_empty() {
            return Ok(());
        }
        let column = |field: fn(&LoraTile<'_, E::Block>) -> usize| -> Result<Vec<i32>> {
            tiles.iter().map(|tile| int(field(tile))).collect()
        };
        let tile_first = self.upload(&column(|tile| tile.first)?)?;
        let tile_rows = self.upload(&column(|tile| tile.rows)?)?;
        let tile_rank = self.upload(&column(|tile| tile.adapter.rank)?)?;
        let tile_a = self.upload(&tiles.iter().map(|tile| tile.adapter.a.ptr).collect::<Vec<u64>>())?;
        let tile_b = self.upload(&tiles.iter().map(|tile| tile.adapter.b.ptr).collect::<Vec<u64>>())?;
        let shrink: [&dyn KernelArg; 8] = [
            &x.ptr,
            &tile_first.ptr,
            &tile_rows.ptr,
            &tile_a.ptr,
            &tile_rank.ptr,
            &low.ptr,
            &int(in_dim)?,
            &int(max_rank)?,
        ];
        let shrink_grid = (grid(tiles.len())?, grid(max_rank.div_ceil(LORA_WARPS))?);
        self.launch(&kernels::LORA, "lora_shrink_segments", shrink_grid, (32 * LORA_WARPS) as u32, &shrink)?;
        let expand: [&dyn KernelArg; 8] = [
            &low.ptr,
            &tile_first.ptr,
            &tile_rows.ptr,
            &tile_b.ptr,
            &tile_rank.ptr,
            &y.ptr,
            &int(out_dim)?,
            &int(max_rank)?,
        ];
        let expand_grid = (grid(tiles.len())?, grid(out_dim.div_ceil(256))?);
        self.launch(&kernels::LORA, "lora_expand_segments", expand_grid, 256, &expand)
    }
}

/// How [`Backend::lora_on`] launches its kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraLaunch {
    /// A row at a time (BGMV): every row may name its own adapter (decode).
    Rows,
    /// Tiles of consecutive rows sharing an adapter (SGMV): each adapter
    /// row is read once per tile (prefill).
    Segments,
}

/// The sizes one LoRA call works in.
#[derive(Clone, Copy)]
struct LoraDims {
    in_dim: usize,
    out_dim: usize,
    max_rank: usize,
}

/// Consecutive rows `first .. first + rows` sharing `adapter`.
struct LoraTile<'a, B> {
    first: usize,
    rows: usize,
    adapter: &'a DeviceLora<B>,
}

/// The rows with an adapter cut into runs of one adapter, each at most
/// `LORA_TILE` rows.
fn lora_tiles<'a, B>(adapters: &[Option<&'a DeviceLora<B>>]) -> Vec<LoraTile<'a, B>> {
    let mut tiles: Vec<LoraTile<'a, B>> = Vec::new();
    for (row, adapter) in adapters.iter().enumerate() {
        let Some(adapter) = *adapter else { continue };
        match tiles.last_mut() {
            Some(tile)
                if tile.first + tile.rows == row && std::ptr::eq(tile.adapter, adapter) && tile.rows < LORA_TILE =>
            {
                tile.rows += 1
            }
            _ => tiles.push(LoraTile { first: row, rows: 1, adapter }),
        }
    }
    tiles
}

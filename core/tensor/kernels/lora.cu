// LoRA deltas for a batch whose rows use different adapters (BGMV, decode):
// each row r names its adapter's A [rank, in] and B [out, rank] (f32, the
// scale folded into B) by device pointer, 0 for a row without one. Rows
// with different adapters run in the same launch, so 32 adapters cost what
// one does. The shrink writes low[r] = A·x[r]; the expand adds B·low[r] into
// y[r] (the base layer's output), as the CPU twin's deltas are added.

#define LORA_WARPS 8

// Grid: (rows, ceil(max_rank / LORA_WARPS)); block: 32 · LORA_WARPS. One
// warp per rank entry: a dot product of length in_dim.
extern "C" __global__ void __launch_bounds__(32 * LORA_WARPS)
    lora_shrink(const float* x, const unsigned long long* a_ptrs, const int* ranks, float* low, int in_dim,
                int max_rank) {
    const int row = blockIdx.x, lane = threadIdx.x & 31;
    const int entry = blockIdx.y * LORA_WARPS + (threadIdx.x >> 5);
    if (a_ptrs[row] == 0 || entry >= ranks[row]) return;
    const float* a = (const float*)a_ptrs[row] + (size_t)entry * in_dim;
    const float* input = x + (size_t)row * in_dim;
    float partial = 0.0f;
    for (int i = lane; i < in_dim; i += 32) partial += a[i] * input[i];
    const float total = warp_sum(partial);
    if (lane == 0) low[(size_t)row * max_rank + entry] = total;
}

// Grid: (rows, ceil(out_dim / blockDim.x)). One thread per output value.
extern "C" __global__ void lora_expand(const float* low, const unsigned long long* b_ptrs, const int* ranks, float* y,
                                       int out_dim, int max_rank) {
    const int row = blockIdx.x, o = blockIdx.y * blockDim.x + threadIdx.x;
    if (b_ptrs[row] == 0 || o >= out_dim) return;
    const int rank = ranks[row];
    const float* b = (const float*)b_ptrs[row] + (size_t)o * rank;
    const float* coefficients = low + (size_t)row * max_rank;
    float sum = 0.0f;
    for (int r = 0; r < rank; ++r) sum += b[r] * coefficients[r];
    y[(size_t)row * out_dim + o] += sum;
}

// Segments (SGMV, prefill): tiles of up to LORA_TILE consecutive rows that
// share one adapter (tile i: rows tile_first[i] .. + tile_rows[i], adapter
// tile_a[i] / tile_b[i] of rank tile_rank[i]). Each A row and each B row
// is read once per tile instead of once per row. Every row's products are
// summed in the order lora_shrink and lora_expand sum them, so both ways
// give the same bits.

#define LORA_TILE 16

// Grid: (tiles, ceil(max_rank / LORA_WARPS)); block: 32 · LORA_WARPS.
extern "C" __global__ void __launch_bounds__(32 * LORA_WARPS)
    lora_shrink_segments(const float* x, const int* tile_first, const int* tile_rows,
                         const unsigned long long* tile_a, const int* tile_rank, float* low, int in_dim,
                         int max_rank) {
    const int tile = blockIdx.x, lane = threadIdx.x & 31;
    const int entry = blockIdx.y * LORA_WARPS + (threadIdx.x >> 5);
    if (entry >= tile_rank[tile]) return;
    const int first = tile_first[tile], rows = tile_rows[tile];
    const float* a = (const float*)tile_a[tile] + (size_t)entry * in_dim;
    float partial[LORA_TILE];
#pragma unroll
    for (int t = 0; t < LORA_TILE; ++t) partial[t] = 0.0f;
    for (int i = lane; i < in_dim; i += 32) {
        const float weight = a[i];
#pragma unroll
        for (int t = 0; t < LORA_TILE; ++t)
            if (t < rows) partial[t] += weight * x[(size_t)(first + t) * in_dim + i];
    }
#pragma unroll
    for (int t = 0; t < LORA_TILE; ++t) {
        if (t < rows) {
            const float total = warp_sum(partial[t]);
            if (lane == 0) low[(size_t)(first + t) * max_rank + entry] = total;
        }
    }
}

// Grid: (tiles, ceil(out_dim / blockDim.x)). One thread per output value.
extern "C" __global__ void lora_expand_segments(const float* low, const int* tile_first, const int* tile_rows,
                                                const unsigned long long* tile_b, const int* tile_rank, float* y,
                                                int out_dim, int max_rank) {
    const int tile = blockIdx.x, o = blockIdx.y * blockDim.x + threadIdx.x;
    if (o >= out_dim) return;
    const int first = tile_first[tile], rows = tile_rows[tile], rank = tile_rank[tile];
    const float* b = (const float*)tile_b[tile] + (size_t)o * rank;
    float sum[LORA_TILE];
#pragma unroll
    for (int t = 0; t < LORA_TILE; ++t) sum[t] = 0.0f;
    for (int r = 0; r < rank; ++r) {
        const float weight = b[r];
#pragma unroll
        for (int t = 0; t < LORA_TILE; ++t)
            if (t < rows) sum[t] += weight * low[(size_t)(first + t) * max_rank + r];
    }
#pragma unroll
    for (int t = 0; t < LORA_TILE; ++t)
        if (t < rows) y[(size_t)(first + t) * out_dim + o] += sum[t];
}

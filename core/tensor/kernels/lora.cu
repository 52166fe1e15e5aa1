// LoRA deltas for a batch whose rows use different adapters (BGMV): each
// row r names its adapter's A [rank, in] and B [out, rank] (f32, the scale
// folded into B) by device pointer, 0 for a row without one. Rows with
// different adapters run in the same launch, so 32 adapters cost what one
// does. The shrink writes low[r] = A·x[r]; the expand adds B·low[r] into
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

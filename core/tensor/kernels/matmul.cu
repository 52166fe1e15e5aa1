// A small f32 matrix product for training's gradients (a weight's, an
// adapter's): c = (accumulate ? c : 0) + alpha · a·b with c row-major
// [m, n] and a(i, l) = a[i·a_row + l·a_col], b(l, j) = b[l·b_row + j·b_col]
// (strides, so either operand may be read transposed). Tiles of MM_TILE²
// outputs; each output sums its products in order of l (deterministic).
// Grid: (ceil(n / MM_TILE), ceil(m / MM_TILE)); block: MM_TILE² threads.

#define MM_TILE 16

extern "C" __global__ void __launch_bounds__(MM_TILE * MM_TILE)
    matmul_f32(const float* a, unsigned long long a_row, unsigned long long a_col, const float* b,
               unsigned long long b_row, unsigned long long b_col, float* c, int m, int n, int depth, float alpha,
               int accumulate) {
    __shared__ float a_tile[MM_TILE][MM_TILE + 1];
    __shared__ float b_tile[MM_TILE][MM_TILE + 1];
    const int tx = threadIdx.x % MM_TILE, ty = threadIdx.x / MM_TILE;
    const int i = blockIdx.y * MM_TILE + ty, j = blockIdx.x * MM_TILE + tx;
    float sum = 0.0f;
    for (int l0 = 0; l0 < depth; l0 += MM_TILE) {
        __syncthreads();  // the previous tiles are consumed
        const int a_l = l0 + tx, b_l = l0 + ty;
        a_tile[ty][tx] = i < m && a_l < depth ? a[(size_t)i * a_row + (size_t)a_l * a_col] : 0.0f;
        b_tile[ty][tx] = b_l < depth && j < n ? b[(size_t)b_l * b_row + (size_t)j * b_col] : 0.0f;
        __syncthreads();
        const int steps = min(MM_TILE, depth - l0);
        for (int l = 0; l < steps; ++l) sum += a_tile[ty][l] * b_tile[l][tx];
    }
    if (i >= m || j >= n) return;
    float* out = c + (size_t)i * n + j;
    *out = accumulate ? *out + alpha * sum : alpha * sum;
}

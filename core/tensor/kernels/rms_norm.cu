// RMSNorm: out[row] = x[row] / sqrt(mean(x[row]²) + eps) · weight.
// Grid: one block per row; any block size that is a multiple of 32.
extern "C" __global__ void rms_norm(const float* x, const float* weight, float* out, int dim, float eps) {
    __shared__ float scratch[32];
    const float* row = x + (size_t)blockIdx.x * dim;
    float* dst = out + (size_t)blockIdx.x * dim;
    float squares = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) squares += row[i] * row[i];
    const float inv_rms = 1.0f / sqrtf(block_sum(squares, scratch) / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = row[i] * inv_rms * weight[i];
}

// The backward, rows in parallel: dx[row] += ∂loss/∂x from dy, with
// x̂ = x·inv_rms: dx += inv_rms · (dy·w − x̂ · mean(dy·w·x̂)); each row's
// inv_rms is written for rms_norm_backward_weight.
// Grid: one block per row.
extern "C" __global__ void rms_norm_backward(const float* x, const float* weight, const float* dy, float* dx,
                                             float* inv_rms_out, int dim, float eps) {
    __shared__ float scratch[32];
    const float* row = x + (size_t)blockIdx.x * dim;
    const float* grad = dy + (size_t)blockIdx.x * dim;
    float* dst = dx + (size_t)blockIdx.x * dim;
    float squares = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) squares += row[i] * row[i];
    const float inv_rms = 1.0f / sqrtf(block_sum(squares, scratch) / (float)dim + eps);
    float projection = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) projection += grad[i] * weight[i] * row[i];
    const float shared_term = block_sum(projection, scratch) * inv_rms * inv_rms / (float)dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        dst[i] += inv_rms * (grad[i] * weight[i] - row[i] * shared_term);
    if (threadIdx.x == 0) inv_rms_out[blockIdx.x] = inv_rms;
}

// The weight's gradient, deterministic: dweight[i] += Σ_rows dy·x·inv_rms,
// one thread per column walking the rows in order (coalesced across the
// warp's columns).
// Grid: ceil(dim / blockDim.x) blocks.
extern "C" __global__ void rms_norm_backward_weight(const float* x, const float* dy, const float* inv_rms, float* dweight,
                                                    int rows, int dim) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= dim) return;
    float sum = 0.0f;
    for (int r = 0; r < rows; ++r) sum += dy[(size_t)r * dim + i] * x[(size_t)r * dim + i] * inv_rms[r];
    dweight[i] += sum;
}

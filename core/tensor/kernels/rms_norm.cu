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

// Embedding gather: out[t] = table[ids[t]] widened to f32. The host checks
// every id against the vocabulary before the launch.
// Grid: one block per token.
extern "C" __global__ void embedding_f32(const float* table, const unsigned int* ids, float* out, int dim) {
    const float* row = table + (size_t)ids[blockIdx.x] * dim;
    float* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = row[i];
}

extern "C" __global__ void embedding_f16(const unsigned short* table, const unsigned int* ids, float* out, int dim) {
    const unsigned short* row = table + (size_t)ids[blockIdx.x] * dim;
    float* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = f16_to_f32(row[i]);
}

extern "C" __global__ void embedding_bf16(const unsigned short* table, const unsigned int* ids, float* out, int dim) {
    const unsigned short* row = table + (size_t)ids[blockIdx.x] * dim;
    float* dst = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = bf16_to_f32(row[i]);
}

// The backward of the gather into an f32 table gradient: dtable[ids[t]] +=
// dy[t], tokens in order for each column (a token repeated adds twice;
// deterministic, no atomics). Grid: ceil(dim / blockDim.x) blocks.
extern "C" __global__ void embedding_backward(const float* dy, const unsigned int* ids, float* dtable, int tokens,
                                              int dim) {
    const int column = blockIdx.x * blockDim.x + threadIdx.x;
    if (column >= dim) return;
    for (int t = 0; t < tokens; ++t) dtable[(size_t)ids[t] * dim + column] += dy[(size_t)t * dim + column];
}

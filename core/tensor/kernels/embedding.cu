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

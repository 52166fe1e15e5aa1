// Linear layers: y[t][row] = Σk W[row][k] · x[t][k], W read as stored
// (GGUF blocks, f16, bf16 or f32) and widened in registers, never copied
// out dequantized. One warp per weight row; each lane takes 32-element
// units of the row in turn, widens the unit once and uses it for every
// token of the launch: up to LINEAR_TOKENS tokens (linear_*, decode) or
// LINEAR_WIDE_TOKENS (linear_wide_*, prefill: the weights are read once per
// 32 tokens). Both sum each token's products in the same order, so a
// token's result does not depend on the launch it was in. The host passes
// the row's length k (a multiple of the format's block) and its byte size.
// Grid: ceil(rows / LINEAR_WARPS) blocks of 32 · LINEAR_WARPS threads.
//
// The backward (linear_backward_*, further down) takes the same formats.

#define LINEAR_TOKENS 8
#define LINEAR_WIDE_TOKENS 32
#define LINEAR_WARPS 4

// Each format's unit loader: the 32 weights of unit `u` of a row.
struct Q4_0 {  // 18-byte blocks: f16 d | 16 bytes, element j low nibble, j+16 high
    static __device__ __forceinline__ void load(const unsigned char* row, int u, float* w) {
        const unsigned char* block = row + (size_t)u * 18;
        const float d = f16_at(block);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int q = block[2 + j];
            w[j] = d * (float)((q & 15) - 8);
            w[j + 16] = d * (float)((q >> 4) - 8);
        }
    }
};

struct Q4_1 {  // 20-byte blocks: f16 d | f16 m | 16 bytes of nibbles
    static __device__ __forceinline__ void load(const unsigned char* row, int u, float* w) {
        const unsigned char* block = row + (size_t)u * 20;
        const float d = f16_at(block), m = f16_at(block + 2);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int q = block[4 + j];
            w[j] = d * (float)(q & 15) + m;
            w[j + 16] = d * (float)(q >> 4) + m;
        }
    }
};

struct Q8_0 {  // 34-byte blocks: f16 d | 32 signed bytes
    static __device__ __forceinline__ void load(const unsigned char* row, int u, float* w) {
        const unsigned char* block = row + (size_t)u * 34;
        const float d = f16_at(block);
#pragma unroll
        for (int j = 0; j < 32; ++j) w[j] = d * (float)(signed char)block[2 + j];
    }
};

struct Q4_K {  // 144-byte super blocks of eight 32-element units: f16 d | f16 dmin | 12 scale bytes | 128 bytes
    static __device__ __forceinline__ void load(const unsigned char* row, int u, float* w) {
        const unsigned char* block = row + (size_t)(u / 8) * 144;
        const int j = u % 8;
        const unsigned char* scales = block + 4;
        int sc, m;
        if (j < 4) {
            sc = scales[j] & 63;
            m = scales[j + 4] & 63;
        } else {
            sc = (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4);
            m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        }
        const float d = f16_at(block) * (float)sc, min = f16_at(block + 2) * (float)m;
        const unsigned char* qs = block + 16 + 32 * (j / 2);
        const int shift = 4 * (j % 2);
#pragma unroll
        for (int l = 0; l < 32; ++l) w[l] = d * (float)((qs[l] >> shift) & 15) - min;
    }
};

struct Q6_K {  // 210-byte super blocks: 128 bytes low nibbles | 64 bytes high pairs | 16 signed scales | f16 d
    static __device__ __forceinline__ void load(const unsigned char* row, int u, float* w) {
        const unsigned char* block = row + (size_t)(u / 8) * 210;
        const int j = u % 8, half = j / 4, group = j % 4;
        const unsigned char* low = block + 64 * half + 32 * (group % 2);
        const unsigned char* high = block + 128 + 32 * half;
        const int low_shift = 4 * (group / 2), high_shift = 2 * group;
        const float d = f16_at(block + 208);
        const float d0 = d * (float)(signed char)block[192 + 2 * j];
        const float d1 = d * (float)(signed char)block[192 + 2 * j + 1];
#pragma unroll
        for (int l = 0; l < 32; ++l) {
            const int q = (((low[l] >> low_shift) & 15) | (((high[l] >> high_shift) & 3) << 4)) - 32;
            w[l] = (l < 16 ? d0 : d1) * (float)q;
        }
    }
};

struct F16 {
    static __device__ __forceinline__ void load(const unsigned char* row, int u, float* w) {
        const unsigned short* values = (const unsigned short*)row + (size_t)u * 32;
#pragma unroll
        for (int j = 0; j < 32; ++j) w[j] = f16_to_f32(values[j]);
    }
};

struct BF16 {
    static __device__ __forceinline__ void load(const unsigned char* row, int u, float* w) {
        const unsigned short* values = (const unsigned short*)row + (size_t)u * 32;
#pragma unroll
        for (int j = 0; j < 32; ++j) w[j] = bf16_to_f32(values[j]);
    }
};

struct F32 {
    static __device__ __forceinline__ void load(const unsigned char* row, int u, float* w) {
        const float* values = (const float*)row + (size_t)u * 32;
#pragma unroll
        for (int j = 0; j < 32; ++j) w[j] = values[j];
    }
};

template <typename Format, int TOKENS>
__device__ __forceinline__ void linear_rows(const unsigned char* weights, size_t row_bytes, const float* x, float* y,
                                            int rows, int k, int tokens) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * LINEAR_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;  // whole warps leave together
    const unsigned char* src = weights + (size_t)row * row_bytes;
    float acc[TOKENS];
#pragma unroll
    for (int t = 0; t < TOKENS; ++t) acc[t] = 0.0f;
    const int units = k / 32;
    for (int u = lane; u < units; u += 32) {
        float w[32];
        Format::load(src, u, w);
#pragma unroll
        for (int t = 0; t < TOKENS; ++t) {
            if (t < tokens) {
                const float4* xs = (const float4*)(x + (size_t)t * k + (size_t)u * 32);
                float sum = 0.0f;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const float4 v = xs[j];
                    sum += w[4 * j] * v.x + w[4 * j + 1] * v.y + w[4 * j + 2] * v.z + w[4 * j + 3] * v.w;
                }
                acc[t] += sum;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < TOKENS; ++t) {
        if (t < tokens) {
            const float total = warp_sum(acc[t]);
            if (lane == 0) y[(size_t)t * rows + row] = total;
        }
    }
}

#define LINEAR_KERNEL(name, wide, Format)                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * LINEAR_WARPS)                                             \
        name(const unsigned char* weights, unsigned long long row_bytes, const float* x, float* y, int rows, int k, \
             int tokens) {                                                                                      \
        linear_rows<Format, LINEAR_TOKENS>(weights, (size_t)row_bytes, x, y, rows, k, tokens);                 \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(32 * LINEAR_WARPS)                                             \
        wide(const unsigned char* weights, unsigned long long row_bytes, const float* x, float* y, int rows, int k, \
             int tokens) {                                                                                      \
        linear_rows<Format, LINEAR_WIDE_TOKENS>(weights, (size_t)row_bytes, x, y, rows, k, tokens);            \
    }

LINEAR_KERNEL(linear_q4_0, linear_wide_q4_0, Q4_0)
LINEAR_KERNEL(linear_q4_1, linear_wide_q4_1, Q4_1)
LINEAR_KERNEL(linear_q8_0, linear_wide_q8_0, Q8_0)
LINEAR_KERNEL(linear_q4_k, linear_wide_q4_k, Q4_K)
LINEAR_KERNEL(linear_q6_k, linear_wide_q6_k, Q6_K)
LINEAR_KERNEL(linear_f16, linear_wide_f16, F16)
LINEAR_KERNEL(linear_bf16, linear_wide_bf16, BF16)
LINEAR_KERNEL(linear_f32, linear_wide_f32, F32)

// Input gradient of y = x·Wᵀ: dx[t][k] += Σrow dy[t][row] · W[row][k], W
// read as stored. A block owns LB_UNITS units of the inputs (one input per
// thread) and LB_TOKENS tokens (grid.y), and walks every row, LB_ROWS at a
// time: its threads widen the stage's (row, unit) pairs into shared memory
// once, then each adds its input's products for every token, in row order
// (deterministic, no atomics).
// Grid: (ceil(k / (32 · LB_UNITS)), ceil(tokens / LB_TOKENS)); block: 32 ·
// LB_UNITS threads (= LB_ROWS · LB_UNITS: one (row, unit) each per stage).

#define LB_UNITS 8
#define LB_ROWS 32
#define LB_TOKENS 8

template <typename Format>
__device__ __forceinline__ void linear_backward_rows(const unsigned char* weights, size_t row_bytes, const float* dy,
                                                     float* dx, int rows, int k, int tokens) {
    __shared__ float weight_stage[LB_ROWS][32 * LB_UNITS + 1];
    __shared__ float dy_stage[LB_TOKENS][LB_ROWS];
    const int units = k / 32, first_unit = blockIdx.x * LB_UNITS, first_token = blockIdx.y * LB_TOKENS;
    const int count = min(LB_TOKENS, tokens - first_token);
    const int input = first_unit * 32 + threadIdx.x;
    const bool owns_input = input < k;
    float acc[LB_TOKENS];
#pragma unroll
    for (int t = 0; t < LB_TOKENS; ++t) acc[t] = 0.0f;
    for (int stage = 0; stage < rows; stage += LB_ROWS) {
        __syncthreads();  // the previous stage is consumed
        const int r = threadIdx.x / LB_UNITS, u = threadIdx.x % LB_UNITS;
        if (stage + r < rows && first_unit + u < units) {
            float w[32];
            Format::load(weights + (size_t)(stage + r) * row_bytes, first_unit + u, w);
#pragma unroll
            for (int j = 0; j < 32; ++j) weight_stage[r][32 * u + j] = w[j];
        }
        for (int i = threadIdx.x; i < LB_TOKENS * LB_ROWS; i += blockDim.x) {
            const int t = i / LB_ROWS, row = stage + i % LB_ROWS;
            dy_stage[t][i % LB_ROWS] = t < count && row < rows ? dy[(size_t)(first_token + t) * rows + row] : 0.0f;
        }
        __syncthreads();
        if (!owns_input) continue;
        const int stage_rows = min(LB_ROWS, rows - stage);
        for (int row = 0; row < stage_rows; ++row) {
            const float w = weight_stage[row][threadIdx.x];
#pragma unroll
            for (int t = 0; t < LB_TOKENS; ++t) acc[t] += dy_stage[t][row] * w;
        }
    }
    if (!owns_input) return;
    for (int t = 0; t < count; ++t) dx[(size_t)(first_token + t) * k + input] += acc[t];
}

#define LINEAR_BACKWARD_KERNEL(name, Format)                                                                    \
    extern "C" __global__ void __launch_bounds__(32 * LB_UNITS)                                                 \
        name(const unsigned char* weights, unsigned long long row_bytes, const float* dy, float* dx, int rows,  \
             int k, int tokens) {                                                                               \
        linear_backward_rows<Format>(weights, (size_t)row_bytes, dy, dx, rows, k, tokens);                     \
    }

LINEAR_BACKWARD_KERNEL(linear_backward_q4_0, Q4_0)
LINEAR_BACKWARD_KERNEL(linear_backward_q4_1, Q4_1)
LINEAR_BACKWARD_KERNEL(linear_backward_q8_0, Q8_0)
LINEAR_BACKWARD_KERNEL(linear_backward_q4_k, Q4_K)
LINEAR_BACKWARD_KERNEL(linear_backward_q6_k, Q6_K)
LINEAR_BACKWARD_KERNEL(linear_backward_f16, F16)
LINEAR_BACKWARD_KERNEL(linear_backward_bf16, BF16)
LINEAR_BACKWARD_KERNEL(linear_backward_f32, F32)

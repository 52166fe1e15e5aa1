// Decode attention: query row `r` (one token, n_head heads) attends to every
// cached position of its own sequence, whose keys and values are
// [length, n_kv_head · head_dim] arrays at key_ptrs[r] / value_ptrs[r], of
// f32 (attention_decode), f16 or bf16 (attention_decode_f16 / _bf16; sums in
// f32).
// Grouped-query heads share their KV head. Each warp runs an online softmax
// over every ATT_WARPS-th position; the warps' partial sums are then merged.
// Grid: (rows, n_head); block: 32 · ATT_WARPS threads; head_dim ≤ 256 and a
// multiple of 32; every length ≥ 1 (the host checks both).

#define ATT_WARPS 4
#define ATT_MAX_PER_LANE 8

template <typename KV>
__device__ void decode_rows(const float* q, const unsigned long long* key_ptrs, const unsigned long long* value_ptrs,
                            const int* lengths, float* out, int n_head, int n_kv_head, int head_dim, float scale) {
    __shared__ float warp_max_score[ATT_WARPS], warp_denominator[ATT_WARPS];
    __shared__ float warp_acc[ATT_WARPS][32 * ATT_MAX_PER_LANE];
    const int row = blockIdx.x, head = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int per_lane = head_dim / 32;
    const int kv_stride = n_kv_head * head_dim, kv_offset = (head / (n_head / n_kv_head)) * head_dim;
    const KV* keys = (const KV*)key_ptrs[row] + kv_offset;
    const KV* values = (const KV*)value_ptrs[row] + kv_offset;
    const int length = lengths[row];
    const float* query = q + ((size_t)row * n_head + head) * head_dim;

    float qv[ATT_MAX_PER_LANE], acc[ATT_MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; ++i) {
        qv[i] = i < per_lane ? query[lane + 32 * i] : 0.0f;
        acc[i] = 0.0f;
    }
    float max_score = NEG_INFINITY, denominator = 0.0f;
    for (int p = warp; p < length; p += ATT_WARPS) {
        const KV* key = keys + (size_t)p * kv_stride;
        float partial = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; ++i)
            if (i < per_lane) partial += qv[i] * kv_load(key, lane + 32 * i);
        const float score = warp_sum(partial) * scale;
        const float new_max = fmaxf(max_score, score);
        const float correction = expf(max_score - new_max);  // 0 on the first position
        const float weight = expf(score - new_max);
        denominator = denominator * correction + weight;
        const KV* value = values + (size_t)p * kv_stride;
#pragma unroll
        for (int i = 0; i < ATT_MAX_PER_LANE; ++i)
            if (i < per_lane) acc[i] = acc[i] * correction + weight * kv_load(value, lane + 32 * i);
        max_score = new_max;
    }
    if (lane == 0) {
        warp_max_score[warp] = max_score;
        warp_denominator[warp] = denominator;
    }
#pragma unroll
    for (int i = 0; i < ATT_MAX_PER_LANE; ++i)
        if (i < per_lane) warp_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    if (warp != 0) return;
    float overall_max = NEG_INFINITY;
    for (int w = 0; w < ATT_WARPS; ++w) overall_max = fmaxf(overall_max, warp_max_score[w]);
    float total = 0.0f, factors[ATT_WARPS];
#pragma unroll
    for (int w = 0; w < ATT_WARPS; ++w) {
        // A warp that saw no position has max −inf and weight 0.
        factors[w] = expf(warp_max_score[w] - overall_max);
        total += warp_denominator[w] * factors[w];
    }
    float* dst = out + ((size_t)row * n_head + head) * head_dim;
    for (int i = 0; i < per_lane; ++i) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; ++w) sum += warp_acc[w][lane + 32 * i] * factors[w];
        dst[lane + 32 * i] = sum / total;
    }
}

extern "C" __global__ void __launch_bounds__(32 * ATT_WARPS)
    attention_decode(const float* q, const unsigned long long* key_ptrs, const unsigned long long* value_ptrs,
                     const int* lengths, float* out, int n_head, int n_kv_head, int head_dim, float scale) {
    decode_rows<float>(q, key_ptrs, value_ptrs, lengths, out, n_head, n_kv_head, head_dim, scale);
}

extern "C" __global__ void __launch_bounds__(32 * ATT_WARPS)
    attention_decode_f16(const float* q, const unsigned long long* key_ptrs, const unsigned long long* value_ptrs,
                         const int* lengths, float* out, int n_head, int n_kv_head, int head_dim, float scale) {
    decode_rows<unsigned short>(q, key_ptrs, value_ptrs, lengths, out, n_head, n_kv_head, head_dim, scale);
}

extern "C" __global__ void __launch_bounds__(32 * ATT_WARPS)
    attention_decode_bf16(const float* q, const unsigned long long* key_ptrs, const unsigned long long* value_ptrs,
                          const int* lengths, float* out, int n_head, int n_kv_head, int head_dim, float scale) {
    decode_rows<bf16_bits>(q, key_ptrs, value_ptrs, lengths, out, n_head, n_kv_head, head_dim, scale);
}

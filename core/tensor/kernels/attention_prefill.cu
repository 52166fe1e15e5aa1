// Causal prefill attention, flash style: queries at positions start ..
// start + tokens of one sequence attend to its keys 0 ..= their own
// position (keys and values are [start + tokens, n_kv_head · head_dim], the
// cached prefix first, of f32 (attention_prefill) or f16
// (attention_prefill_f16; tiles and sums in f32)). Key/value tiles of PF_TILE positions are staged
// in shared memory once for the block's PF_WARPS queries (one warp per
// query); each warp keeps an online softmax, so no score matrix is written.
// Grouped-query heads read their KV head.
// Grid: (ceil(tokens / PF_WARPS), n_head); block: 32 · PF_WARPS threads;
// head_dim a multiple of 32, at most PF_MAX_HEAD (the host checks).

#define PF_WARPS 8
#define PF_TILE 32
#define PF_MAX_HEAD 128

template <typename KV>
__device__ void prefill_rows(const float* q, const KV* keys, const KV* values, float* out, int tokens, int start,
                             int n_head, int n_kv_head, int head_dim, float scale) {
    __shared__ float key_tile[PF_TILE][PF_MAX_HEAD + 1];  // +1: lanes read rows, not banks
    __shared__ float value_tile[PF_TILE][PF_MAX_HEAD];
    __shared__ float query_tile[PF_WARPS][PF_MAX_HEAD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, head = blockIdx.y;
    const int first_query = blockIdx.x * PF_WARPS, query = first_query + warp;
    const bool active = query < tokens;  // warp-uniform
    const int position = start + query;
    const int visible_end = start + min(first_query + PF_WARPS, tokens);  // keys any query of the block sees
    const int per_lane = head_dim / 32;
    const int kv_stride = n_kv_head * head_dim, kv_offset = (head / (n_head / n_kv_head)) * head_dim;
    const size_t query_at = ((size_t)query * n_head + head) * head_dim;
    if (active)
        for (int d = lane; d < head_dim; d += 32) query_tile[warp][d] = q[query_at + d];

    float acc[PF_MAX_HEAD / 32];
#pragma unroll
    for (int i = 0; i < PF_MAX_HEAD / 32; ++i) acc[i] = 0.0f;
    float max_score = NEG_INFINITY, denominator = 0.0f;
    for (int tile_start = 0; tile_start < visible_end; tile_start += PF_TILE) {
        __syncthreads();  // the previous tile is consumed (and the queries stored)
        for (int index = threadIdx.x; index < PF_TILE * head_dim; index += blockDim.x) {
            const int j = index / head_dim, d = index % head_dim, p = tile_start + j;
            const size_t at = (size_t)p * kv_stride + kv_offset + d;
            key_tile[j][d] = p < visible_end ? kv_load(keys, at) : 0.0f;
            value_tile[j][d] = p < visible_end ? kv_load(values, at) : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        // Lane j scores key tile_start + j.
        const int key = tile_start + lane;
        float score = NEG_INFINITY;
        if (key <= position) {
            float dot = 0.0f;
            for (int d = 0; d < head_dim; ++d) dot += query_tile[warp][d] * key_tile[lane][d];
            score = dot * scale;
        }
        const float tile_max = warp_max(score);
        if (tile_max == NEG_INFINITY) continue;  // the whole tile is in this query's future
        const float new_max = fmaxf(max_score, tile_max);
        const float correction = expf(max_score - new_max);
        const float weight = expf(score - new_max);  // 0 where masked
        denominator = denominator * correction + warp_sum(weight);
#pragma unroll
        for (int i = 0; i < PF_MAX_HEAD / 32; ++i) acc[i] *= correction;
        for (int j = 0; j < PF_TILE; ++j) {
            const float w = __shfl_sync(0xffffffffu, weight, j);
#pragma unroll
            for (int i = 0; i < PF_MAX_HEAD / 32; ++i)
                if (i < per_lane) acc[i] += w * value_tile[j][lane + 32 * i];
        }
        max_score = new_max;
    }
    if (!active) return;
    for (int i = 0; i < per_lane; ++i) out[query_at + lane + 32 * i] = acc[i] / denominator;
}

extern "C" __global__ void __launch_bounds__(32 * PF_WARPS)
    attention_prefill(const float* q, const float* keys, const float* values, float* out, int tokens, int start,
                      int n_head, int n_kv_head, int head_dim, float scale) {
    prefill_rows<float>(q, keys, values, out, tokens, start, n_head, n_kv_head, head_dim, scale);
}

extern "C" __global__ void __launch_bounds__(32 * PF_WARPS)
    attention_prefill_f16(const float* q, const unsigned short* keys, const unsigned short* values, float* out,
                          int tokens, int start, int n_head, int n_kv_head, int head_dim, float scale) {
    prefill_rows<unsigned short>(q, keys, values, out, tokens, start, n_head, n_kv_head, head_dim, scale);
}

extern "C" __global__ void __launch_bounds__(32 * PF_WARPS)
    attention_prefill_bf16(const float* q, const bf16_bits* keys, const bf16_bits* values, float* out, int tokens,
                           int start, int n_head, int n_kv_head, int head_dim, float scale) {
    prefill_rows<bf16_bits>(q, keys, values, out, tokens, start, n_head, n_kv_head, head_dim, scale);
}

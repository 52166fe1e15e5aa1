// The backward of causal attention over sequences packed back to back
// (token t's sequence spans first[t] .. end[t]; each starts at position 0),
// as the CPU twin computes it: P = softmax(scale · q·kᵀ) recomputed from q
// and k, dP = dO·vᵀ, D = rowsum(P ∘ dP), dS = P ∘ (dP − D); dq = scale ·
// dS·k, dk = scale · dSᵀ·q, dv = Pᵀ·dO, grouped-query heads summed into
// their KV head. Two kernels, no atomics: attention_backward_dq (one warp
// per query and head: the row's log-sum-exp and D, written for the second
// kernel, then dq) and attention_backward_dkv (one warp per key and KV
// head, over the later queries of its sequence in every head of the
// group). Every sum runs in a fixed order (deterministic).
// Grid: (ceil(tokens / AB_WARPS), heads: n_head for dq, n_kv_head for
// dkv); block: 32 · AB_WARPS. head_dim a multiple of 32, ≤ AB_MAX_HEAD.

#define AB_WARPS 4
#define AB_MAX_HEAD 128
#define AB_PER_LANE (AB_MAX_HEAD / 32)

// Lane `lane`'s share of a head vector: elements lane, lane + 32, ….
__device__ __forceinline__ void load_head(const float* v, int per_lane, int lane, float* out) {
#pragma unroll
    for (int i = 0; i < AB_PER_LANE; ++i) out[i] = i < per_lane ? v[lane + 32 * i] : 0.0f;
}

// The dot product of a lane-held vector with a vector in memory, summed
// over the warp.
__device__ __forceinline__ float head_dot(const float* held, const float* v, int per_lane, int lane) {
    float partial = 0.0f;
#pragma unroll
    for (int i = 0; i < AB_PER_LANE; ++i)
        if (i < per_lane) partial += held[i] * v[lane + 32 * i];
    return warp_sum(partial);
}

extern "C" __global__ void __launch_bounds__(32 * AB_WARPS)
    attention_backward_dq(const float* q, const float* k, const float* v, const float* dout, const int* first,
                          float* dq, float* lse_out, float* d_out, int tokens, int n_head, int n_kv_head,
                          int head_dim, float scale) {
    const int lane = threadIdx.x & 31, query = blockIdx.x * AB_WARPS + (threadIdx.x >> 5), head = blockIdx.y;
    if (query >= tokens) return;  // whole warps leave together
    const int per_lane = head_dim / 32, kv_stride = n_kv_head * head_dim;
    const int kv_offset = (head / (n_head / n_kv_head)) * head_dim;
    const size_t query_at = ((size_t)query * n_head + head) * head_dim;
    float q_held[AB_PER_LANE], do_held[AB_PER_LANE], grad[AB_PER_LANE];
    load_head(q + query_at, per_lane, lane, q_held);
    load_head(dout + query_at, per_lane, lane, do_held);
    const float* keys = k + kv_offset;
    const float* values = v + kv_offset;
    float max_score = NEG_INFINITY, denominator = 0.0f;
    for (int key = first[query]; key <= query; ++key) {
        const float score = head_dot(q_held, keys + (size_t)key * kv_stride, per_lane, lane) * scale;
        const float new_max = fmaxf(max_score, score);
        denominator = denominator * expf(max_score - new_max) + expf(score - new_max);
        max_score = new_max;
    }
    const float lse = max_score + logf(denominator);
    float d = 0.0f;
    for (int key = first[query]; key <= query; ++key) {
        const float p = expf(head_dot(q_held, keys + (size_t)key * kv_stride, per_lane, lane) * scale - lse);
        d += p * head_dot(do_held, values + (size_t)key * kv_stride, per_lane, lane);
    }
#pragma unroll
    for (int i = 0; i < AB_PER_LANE; ++i) grad[i] = 0.0f;
    for (int key = first[query]; key <= query; ++key) {
        const float* key_row = keys + (size_t)key * kv_stride;
        const float p = expf(head_dot(q_held, key_row, per_lane, lane) * scale - lse);
        const float ds = p * (head_dot(do_held, values + (size_t)key * kv_stride, per_lane, lane) - d);
#pragma unroll
        for (int i = 0; i < AB_PER_LANE; ++i)
            if (i < per_lane) grad[i] += ds * key_row[lane + 32 * i];
    }
    for (int i = 0; i < per_lane; ++i) dq[query_at + lane + 32 * i] = scale * grad[i];
    if (lane == 0) {
        lse_out[(size_t)query * n_head + head] = lse;
        d_out[(size_t)query * n_head + head] = d;
    }
}

extern "C" __global__ void __launch_bounds__(32 * AB_WARPS)
    attention_backward_dkv(const float* q, const float* k, const float* v, const float* dout, const int* end,
                           const float* lse, const float* d, float* dk, float* dv, int tokens, int n_head,
                           int n_kv_head, int head_dim, float scale) {
    const int lane = threadIdx.x & 31, key = blockIdx.x * AB_WARPS + (threadIdx.x >> 5), kv_head = blockIdx.y;
    if (key >= tokens) return;
    const int per_lane = head_dim / 32, group = n_head / n_kv_head;
    const size_t key_at = ((size_t)key * n_kv_head + kv_head) * head_dim;
    float k_held[AB_PER_LANE], v_held[AB_PER_LANE], key_grad[AB_PER_LANE], value_grad[AB_PER_LANE];
    load_head(k + key_at, per_lane, lane, k_held);
    load_head(v + key_at, per_lane, lane, v_held);
#pragma unroll
    for (int i = 0; i < AB_PER_LANE; ++i) key_grad[i] = value_grad[i] = 0.0f;
    for (int head = kv_head * group; head < (kv_head + 1) * group; ++head) {
        for (int query = key; query < end[key]; ++query) {
            const size_t query_at = ((size_t)query * n_head + head) * head_dim;
            const size_t row = (size_t)query * n_head + head;
            const float p = expf(head_dot(k_held, q + query_at, per_lane, lane) * scale - lse[row]);
            const float ds = p * (head_dot(v_held, dout + query_at, per_lane, lane) - d[row]);
#pragma unroll
            for (int i = 0; i < AB_PER_LANE; ++i) {
                if (i < per_lane) {
                    key_grad[i] += ds * q[query_at + lane + 32 * i];
                    value_grad[i] += p * dout[query_at + lane + 32 * i];
                }
            }
        }
    }
    for (int i = 0; i < per_lane; ++i) {
        dk[key_at + lane + 32 * i] = scale * key_grad[i];
        dv[key_at + lane + 32 * i] = value_grad[i];
    }
}

// Rotary position embedding in the Hugging Face layout: each head vector's
// halves (x1, x2) become (x1·cos − x2·sin, x2·cos + x1·sin), with the angles
// of the token's own position read from the host's tables (the CPU twin's
// RopeTable, uploaded once), so both devices rotate by the same f32 values.
// `direction` is 1 for the forward and −1 for the backward: a rotation's
// transpose is the rotation by the opposite angle, which turns the
// gradient of rotated vectors into that of the unrotated ones.
// Grid: (tokens, heads); block: head_dim / 2 threads.
extern "C" __global__ void rope(float* x, const float* cos_table, const float* sin_table, const int* positions,
                                int n_heads, int head_dim, float direction) {
    const int half = head_dim / 2, i = threadIdx.x;
    if (i >= half) return;
    float* head = x + ((size_t)blockIdx.x * n_heads + blockIdx.y) * head_dim;
    const size_t at = (size_t)positions[blockIdx.x] * half + i;
    const float c = cos_table[at], s = direction * sin_table[at];
    const float a = head[i], b = head[i + half];
    head[i] = a * c - b * s;
    head[i + half] = b * c + a * s;
}

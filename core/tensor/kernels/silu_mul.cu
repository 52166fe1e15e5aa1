// SwiGLU's gate: gate[i] = silu(gate[i]) · up[i], in place.
// Grid: ceil(n / blockDim.x) blocks.
extern "C" __global__ void silu_mul(float* gate, const float* up, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
}

// The backward: from the pre-activations and d(act), dgate and dup
// (overwritten): act = g·σ(g)·u, so dup = dact·g·σ(g) and
// dgate = dact·u·σ(g)·(1 + g·(1 − σ(g))).
extern "C" __global__ void silu_mul_backward(const float* gate, const float* up, const float* dact, float* dgate,
                                             float* dup, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i], sigmoid = 1.0f / (1.0f + expf(-g));
    dup[i] = dact[i] * g * sigmoid;
    dgate[i] = dact[i] * up[i] * sigmoid * (1.0f + g * (1.0f - sigmoid));
}

// SwiGLU's gate: gate[i] = silu(gate[i]) · up[i], in place.
// Grid: ceil(n / blockDim.x) blocks.
extern "C" __global__ void silu_mul(float* gate, const float* up, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
}

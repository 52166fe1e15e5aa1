// Residual and bias additions of the decoder's layers.

// x[i] += y[i] over n values (the residual stream takes a block's output).
// Grid: ceil(n / blockDim.x) blocks.
extern "C" __global__ void add_in_place(float* x, const float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    x[i] += y[i];
}

// y[r, c] += bias[c] over `rows` rows of `cols` (q/k/v biases).
// Grid: (rows, ceil(cols / blockDim.x)).
extern "C" __global__ void add_bias(float* y, const float* bias, int cols) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    y[(size_t)blockIdx.x * cols + c] += bias[c];
}

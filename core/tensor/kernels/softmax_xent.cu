// Softmax cross-entropy over rows of `vocab` logits, in place, as the CPU
// twin: loss[row] = −log softmax(row)[target] (max-shifted) and the row is
// overwritten by scale · (softmax − onehot(target)), the gradient of
// scale · loss. The host checks every target against the vocabulary.
// Grid: one block per row; block: a multiple of 32 threads.
extern "C" __global__ void softmax_xent(float* logits, const unsigned int* targets, float* loss, int vocab, float scale) {
    __shared__ float scratch[32];
    float* row = logits + (size_t)blockIdx.x * vocab;
    float local_max = NEG_INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) local_max = fmaxf(local_max, row[i]);
    // The block's maximum: warp maxima through shared memory.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    local_max = warp_max(local_max);
    if (lane == 0) scratch[warp] = local_max;
    __syncthreads();
    const float row_max = warp_max(lane < warps ? scratch[lane] : NEG_INFINITY);
    float local_sum = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) local_sum += expf(row[i] - row_max);
    const float sum = block_sum(local_sum, scratch);
    const unsigned int target = targets[blockIdx.x];
    const float target_logit = row[target];
    __syncthreads();  // every thread has read the target's logit before it is overwritten
    const float factor = scale / sum;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) row[i] = expf(row[i] - row_max) * factor;
    __syncthreads();
    if (threadIdx.x == 0) {
        row[target] -= scale;
        loss[blockIdx.x] = row_max + logf(sum) - target_logit;
    }
}

// Prepended by tailor-tensor to every kernel before NVRTC compiles it:
// half-float conversions and reductions, written without CUDA's headers so
// that NVRTC needs none (any NVRTC of the major version compiles them).

// −∞ (NVRTC has no math.h, so no INFINITY).
#define NEG_INFINITY __int_as_float(0xff800000)

// An IEEE half's bits widened to f32 (exact).
__device__ __forceinline__ float f16_to_f32(unsigned short bits) {
#ifdef TAILOR_EMULATOR  // emulator.h, on the CPU
    _Float16 half;
    memcpy(&half, &bits, 2);
    return (float)half;
#else
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
    return value;
#endif
}

// An f32 rounded to the nearest IEEE half (ties to even), as bits.
__device__ __forceinline__ unsigned short f32_to_f16(float value) {
#ifdef TAILOR_EMULATOR
    const _Float16 half = (_Float16)value;
    unsigned short bits;
    memcpy(&bits, &half, 2);
    return bits;
#else
    unsigned short bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    return bits;
#endif
}

// A key or value element as f32: f32 caches as they are, f16 ones widened
// (bf16 ones further down).
__device__ __forceinline__ float kv_load(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float kv_load(const unsigned short* p, size_t i) { return f16_to_f32(p[i]); }

// An f32 stored as a cache element of either kind.
__device__ __forceinline__ void kv_put(float* p, size_t i, float value) { p[i] = value; }
__device__ __forceinline__ void kv_put(unsigned short* p, size_t i, float value) { p[i] = f32_to_f16(value); }

// A bfloat16's bits widened to f32 (exact).
__device__ __forceinline__ float bf16_to_f32(unsigned short bits) {
    return __uint_as_float(((unsigned int)bits) << 16);
}

// An f32 rounded to the nearest bfloat16 (ties to even; NaN stays NaN), as
// bits.
__device__ __forceinline__ unsigned short f32_to_bf16(float value) {
    const unsigned int bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((bits >> 16) | 0x40);
    return (unsigned short)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// A bfloat16 cache element: a type of its own, so that kv_load and kv_put
// pick its conversion.
struct bf16_bits {
    unsigned short bits;
};
__device__ __forceinline__ float kv_load(const bf16_bits* p, size_t i) { return bf16_to_f32(p[i].bits); }
__device__ __forceinline__ void kv_put(bf16_bits* p, size_t i, float value) { p[i].bits = f32_to_bf16(value); }

// The little-endian f16 at `p`, which need not be 2-byte aligned (GGUF
// blocks of 18 or 34 bytes put their scales at odd addresses).
__device__ __forceinline__ float f16_at(const unsigned char* p) {
    return f16_to_f32((unsigned short)(p[0] | (p[1] << 8)));
}

// Sum over the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// Maximum over the 32 lanes of a warp; every lane gets it.
__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
    return value;
}

// Sum over a block whose size is a multiple of 32; every thread gets the
// total. `scratch` is 32 floats of shared memory; safe to call repeatedly.
__device__ __forceinline__ float block_sum(float value, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    value = warp_sum(value);
    __syncthreads();
    if (lane == 0) scratch[warp] = value;
    __syncthreads();
    return warp_sum(lane < warps ? scratch[lane] : 0.0f);
}

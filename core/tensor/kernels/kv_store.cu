// Appends each row's new key and value to its own sequence's cache: row r of
// `keys`/`values` (`width` floats each) goes to the addresses the host
// computed for it (its cache's layer buffers at the sequence's length), so a
// decode batch stores every sequence's keys and values in one launch. The
// cache holds f32 (kv_store), or f16 or bf16 rounded to nearest (kv_store_f16,
// kv_store_bf16).
// Grid: rows; block: any multiple of 32 threads.
template <typename KV>
__device__ void store_rows(const float* keys, const float* values, const unsigned long long* key_at,
                           const unsigned long long* value_at, int width) {
    const int r = blockIdx.x;
    KV* key_out = (KV*)key_at[r];
    KV* value_out = (KV*)value_at[r];
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        kv_put(key_out, i, keys[(size_t)r * width + i]);
        kv_put(value_out, i, values[(size_t)r * width + i]);
    }
}

extern "C" __global__ void kv_store(const float* keys, const float* values, const unsigned long long* key_at,
                                    const unsigned long long* value_at, int width) {
    store_rows<float>(keys, values, key_at, value_at, width);
}

extern "C" __global__ void kv_store_f16(const float* keys, const float* values, const unsigned long long* key_at,
                                        const unsigned long long* value_at, int width) {
    store_rows<unsigned short>(keys, values, key_at, value_at, width);
}

extern "C" __global__ void kv_store_bf16(const float* keys, const float* values, const unsigned long long* key_at,
                                         const unsigned long long* value_at, int width) {
    store_rows<bf16_bits>(keys, values, key_at, value_at, width);
}

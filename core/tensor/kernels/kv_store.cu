// Appends each row's new key and value to its own sequence's cache: row r of
// `keys`/`values` (`width` floats each) goes to the addresses the host
// computed for it (its cache's layer buffers at the sequence's length), so a
// decode batch stores every sequence's keys and values in one launch.
// Grid: rows; block: any multiple of 32 threads.
extern "C" __global__ void kv_store(const float* keys, const float* values, const unsigned long long* key_at,
                                    const unsigned long long* value_at, int width) {
    const int r = blockIdx.x;
    float* key_out = (float*)key_at[r];
    float* value_out = (float*)value_at[r];
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        key_out[i] = keys[(size_t)r * width + i];
        value_out[i] = values[(size_t)r * width + i];
    }
}

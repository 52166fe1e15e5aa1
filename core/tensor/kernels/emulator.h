// A CPU emulation of the CUDA features tailor's kernels use, so that the
// kernels' own source runs under g++ and is compared with the CPU twins
// on machines without a GPU (tailor_tensor::cuda::emulator). Every CUDA
// thread of a block is an OS thread (the same ones for every block of a
// launch); blocks run one after another, so
// `__shared__` memory is a static shared by the block's threads. Barriers
// stand in for __syncthreads and for the lockstep of warp shuffles.
// This checks indexing, masking, reductions and synchronisation; it says
// nothing about speed, and a kernel relying on implicit warp lockstep
// without a shuffle or barrier would pass here and fail on a device.
#pragma once
#include <math.h>

#include <algorithm>
#include <barrier>
#include <cstddef>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define TAILOR_EMULATOR 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x = 0, y = 0, z = 0;
};

struct alignas(16) float4 {
    float x, y, z, w;
};

using std::max;
using std::min;

inline float __uint_as_float(unsigned int bits) {
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
}

inline float __int_as_float(int bits) {
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
}

namespace tailor_emulator {

// One block's threads, barriers and the lanes' exchange slots.
struct Block {
    dim3 index, size;
    std::barrier<> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<float> lanes;

    Block(dim3 block_index, unsigned threads)
        : index(block_index), size{threads, 1, 1}, all((std::ptrdiff_t)threads), lanes(threads) {
        for (unsigned first = 0; first < threads; first += 32)
            warps.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)std::min(32u, threads - first)));
    }

    // A thread that returned no longer holds up the others' barriers.
    void leave(unsigned thread) {
        all.arrive_and_drop();
        warps[thread / 32]->arrive_and_drop();
    }
};

inline thread_local dim3 thread_index;
inline thread_local Block* current = nullptr;

// The value lane `source` of this thread's warp holds.
inline float exchange(float value, unsigned source) {
    Block& block = *current;
    const unsigned thread = thread_index.x, first = thread - (thread & 31);
    block.lanes[thread] = value;
    block.warps[thread / 32]->arrive_and_wait();
    const float result = block.lanes[first + source];
    block.warps[thread / 32]->arrive_and_wait();
    return result;
}

template <typename... Params, std::size_t... I>
void call(void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<Params>*>(args[I])...);
}

// Runs `kernel` over a (grid_x, grid_y) grid of `threads`-thread blocks,
// its parameters given as cuLaunchKernel takes them (pointers to values).
// One OS thread per CUDA thread for the whole launch: they run the blocks
// in order (x fastest), meeting at a barrier after each, whose completion
// step (all threads waiting) puts the next block's state in place.
template <typename... Params>
void launch(void (*kernel)(Params...), unsigned grid_x, unsigned grid_y, unsigned threads, void** args) {
    const unsigned blocks = grid_x * grid_y;
    if (blocks == 0 || threads == 0) return;
    const auto index_of = [grid_x](unsigned b) { return dim3{b % grid_x, b / grid_x, 0}; };
    std::unique_ptr<Block> block = std::make_unique<Block>(index_of(0), threads);
    unsigned next = 1;
    const auto advance = [&]() noexcept {
        if (next < blocks) block = std::make_unique<Block>(index_of(next), threads);
        ++next;
    };
    std::barrier between((std::ptrdiff_t)threads, advance);
    std::vector<std::thread> workers;
    workers.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            thread_index = dim3{t, 0, 0};
            for (unsigned b = 0; b < blocks; ++b) {
                current = block.get();
                call(kernel, args, std::index_sequence_for<Params...>{});
                current->leave(t);
                between.arrive_and_wait();
            }
        });
    }
    for (auto& worker : workers) worker.join();
}

}  // namespace tailor_emulator

#define threadIdx (tailor_emulator::thread_index)
#define blockIdx (tailor_emulator::current->index)
#define blockDim (tailor_emulator::current->size)

inline void __syncthreads() { tailor_emulator::current->all.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float value, int offset) {
    return tailor_emulator::exchange(value, (tailor_emulator::thread_index.x & 31) ^ (unsigned)offset);
}

inline float __shfl_sync(unsigned, float value, int lane) {
    return tailor_emulator::exchange(value, (unsigned)lane & 31);
}

// Exports kernel `name` as tailor_emulate_<name>(grid_x, grid_y, threads, args).
#define TAILOR_EMULATOR_EXPORT(name)                                                                      \
    extern "C" void tailor_emulate_##name(unsigned grid_x, unsigned grid_y, unsigned threads, void** args) { \
        tailor_emulator::launch(name, grid_x, grid_y, threads, args);                                     \
    }

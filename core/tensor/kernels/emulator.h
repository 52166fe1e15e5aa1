// A CPU emulation of the CUDA features tailor's kernels use, so that the
// kernels' own source runs under g++ and is compared with the CPU twins
// on machines without a GPU (tailor_tensor::cuda::emulator). Every CUDA
// thread of a block is a fiber (ucontext) of the launching OS thread;
// blocks run one after another, so `__shared__` memory is a static shared
// by the block's threads, and launches run one at a time per process (two
// backends' launches would otherwise share those statics). A fiber runs
// until it waits at a barrier (__syncthreads, or the lockstep of a warp
// shuffle) or returns; a barrier releases its waiters once every thread
// it counts has arrived, and a block whose live threads all wait at
// barriers that cannot complete is reported as a deadlock (a barrier some
// threads skip). This checks indexing, masking, reductions and
// synchronisation; it says nothing about speed, and a kernel relying on
// implicit warp lockstep without a shuffle or barrier would pass here and
// fail on a device.
#pragma once
#include <math.h>
#include <ucontext.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
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

inline unsigned int __float_as_uint(float value) {
    unsigned int bits;
    std::memcpy(&bits, &value, 4);
    return bits;
}

namespace tailor_emulator {

// A barrier among `expected` fibers; threads that return drop out.
struct Barrier {
    unsigned expected = 0, arrived = 0;
    unsigned long generation = 0;
};

// One CUDA thread: its context, and the barrier it waits at (if any).
struct Fiber {
    ucontext_t context;
    Barrier* waiting = nullptr;
    unsigned long generation = 0;
    bool done = false;
};

// One block's threads, barriers and the lanes' exchange slots.
struct Block {
    dim3 index, size;
    Barrier all;
    std::vector<Barrier> warps;
    std::vector<float> lanes;
    std::vector<Fiber> fibers;
    ucontext_t scheduler;

    Block(unsigned threads) : size{threads, 1, 1}, warps((threads + 31) / 32), lanes(threads), fibers(threads) {}

    // Counts every thread in again for block `b`.
    void reset(dim3 block_index) {
        index = block_index;
        all = Barrier{size.x};
        for (unsigned w = 0; w < warps.size(); ++w) warps[w] = Barrier{std::min(32u, size.x - 32 * w)};
        for (Fiber& fiber : fibers) fiber = Fiber{};
    }
};

inline thread_local dim3 thread_index;
inline thread_local Block* current = nullptr;

// Arrives at `barrier` and waits (back in the scheduler) until all it
// counts have arrived.
inline void arrive_and_wait(Barrier& barrier) {
    Block& block = *current;
    Fiber& fiber = block.fibers[thread_index.x];
    if (++barrier.arrived == barrier.expected) {
        barrier.arrived = 0;
        ++barrier.generation;  // the others are released; this one runs on
        return;
    }
    fiber.waiting = &barrier;
    fiber.generation = barrier.generation;
    swapcontext(&fiber.context, &block.scheduler);
}

// A returning thread stops counting for its block's and its warp's barriers.
inline void drop(Barrier& barrier) {
    if (--barrier.expected == barrier.arrived && barrier.arrived > 0) {
        barrier.arrived = 0;
        ++barrier.generation;
    }
}

// The value lane `source` of this thread's warp holds.
inline float exchange(float value, unsigned source) {
    Block& block = *current;
    const unsigned thread = thread_index.x, first = thread - (thread & 31);
    block.lanes[thread] = value;
    arrive_and_wait(block.warps[thread / 32]);
    const float result = block.lanes[first + source];
    arrive_and_wait(block.warps[thread / 32]);
    return result;
}

template <typename... Params, std::size_t... I>
void call(void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<Params>*>(args[I])...);
}

// What a fiber runs: the kernel, then it leaves its barriers.
struct Entry {
    void (*run)(void*);
    void* launch;
};

inline void fiber_main(unsigned high, unsigned low) {
    Entry* entry = reinterpret_cast<Entry*>((static_cast<std::uintptr_t>(high) << 32) | low);
    entry->run(entry->launch);
    Block& block = *current;
    const unsigned thread = thread_index.x;
    drop(block.all);
    drop(block.warps[thread / 32]);
    block.fibers[thread].done = true;
}

// Stacks for the fibers, kept from launch to launch (launches are serialized).
inline std::vector<std::unique_ptr<char[]>> stacks;
constexpr std::size_t STACK_BYTES = 256 << 10;

// Runs block `index` of `block`'s threads to completion.
inline void run_block(Block& block, dim3 index, Entry& entry) {
    block.reset(index);
    current = &block;
    const auto address = reinterpret_cast<std::uintptr_t>(&entry);
    for (unsigned t = 0; t < block.size.x; ++t) {
        ucontext_t& context = block.fibers[t].context;
        getcontext(&context);
        context.uc_stack.ss_sp = stacks[t].get();
        context.uc_stack.ss_size = STACK_BYTES;
        context.uc_link = &block.scheduler;
        makecontext(&context, reinterpret_cast<void (*)()>(fiber_main), 2, (unsigned)(address >> 32),
                    (unsigned)(address & 0xffffffffu));
    }
    unsigned live = block.size.x;
    while (live > 0) {
        bool ran = false;
        for (unsigned t = 0; t < block.size.x; ++t) {
            Fiber& fiber = block.fibers[t];
            if (fiber.done || (fiber.waiting && fiber.waiting->generation == fiber.generation)) continue;
            fiber.waiting = nullptr;
            thread_index = dim3{t, 0, 0};
            swapcontext(&block.scheduler, &fiber.context);
            ran = true;
            if (fiber.done) --live;
        }
        if (!ran) {
            std::fprintf(stderr, "tailor emulator: block (%u, %u) deadlocked at a barrier\n", index.x, index.y);
            std::abort();
        }
    }
}

// Held for a whole launch: `__shared__` statics serve one launch at a time.
inline std::mutex launching;

// Runs `kernel` over a (grid_x, grid_y) grid of `threads`-thread blocks,
// its parameters given as cuLaunchKernel takes them (pointers to values),
// the blocks in order (x fastest), each block's threads as fibers.
template <typename... Params>
void launch(void (*kernel)(Params...), unsigned grid_x, unsigned grid_y, unsigned threads, void** args) {
    const unsigned blocks = grid_x * grid_y;
    if (blocks == 0 || threads == 0) return;
    const std::lock_guard<std::mutex> one_launch_at_a_time(launching);
    // Not zero-filled: a stack's pages are only touched as a fiber grows into them.
    while (stacks.size() < threads) stacks.push_back(std::unique_ptr<char[]>(new char[STACK_BYTES]));
    struct Launch {
        void (*kernel)(Params...);
        void** args;
    } state{kernel, args};
    Entry entry{[](void* launch) {
                    auto* state = static_cast<Launch*>(launch);
                    call(state->kernel, state->args, std::index_sequence_for<Params...>{});
                },
                &state};
    Block block(threads);
    for (unsigned b = 0; b < blocks; ++b) run_block(block, dim3{b % grid_x, b / grid_x, 0}, entry);
}

}  // namespace tailor_emulator

#define threadIdx (tailor_emulator::thread_index)
#define blockIdx (tailor_emulator::current->index)
#define blockDim (tailor_emulator::current->size)

inline void __syncthreads() { tailor_emulator::arrive_and_wait(tailor_emulator::current->all); }

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

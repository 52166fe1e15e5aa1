"""torch's scaled_dot_product_attention on the shapes core/tensor/benches/cuda.rs
times tailor's prefill attention on (one sequence of 2048 tokens, 32 query heads
of 128 over 8 KV heads, causal), in the same FLOP count (the causal half of QKᵀ
and PV), so benches/cuda/run.sh can print the ratio. Needs torch with CUDA on
the GPU machine; says so and exits 0 without it.

    python3 benches/cuda/sdpa.py [--tailor-f32 TFLOPS] [--tailor-f16 TFLOPS]
"""
import argparse
import sys
import time

TOKENS, HEADS, KV_HEADS, HEAD_DIM = 2048, 32, 8, 128


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tailor-f32", type=float, help="tailor's TFLOP/s with an f32 cache")
    parser.add_argument("--tailor-f16", type=float, help="tailor's TFLOP/s with an f16 cache")
    args = parser.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("torch SDPA: torch is not installed on this machine; comparison not run")
        return 0
    if not torch.cuda.is_available():
        print("torch SDPA: torch has no CUDA device here; comparison not run")
        return 0
    flops = 4.0 * HEADS * HEAD_DIM * (TOKENS * (TOKENS + 1) / 2)
    for name, dtype, ours in [("f32", torch.float32, args.tailor_f32), ("f16", torch.float16, args.tailor_f16)]:
        q = torch.randn(1, HEADS, TOKENS, HEAD_DIM, device="cuda", dtype=dtype)
        k = torch.randn(1, KV_HEADS, TOKENS, HEAD_DIM, device="cuda", dtype=dtype)
        v = torch.randn(1, KV_HEADS, TOKENS, HEAD_DIM, device="cuda", dtype=dtype)
        # Grouped-query heads as torch takes them: each KV head repeated.
        k, v = k.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1)
        call = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        for _ in range(3):
            call()
        rounds = []
        for _ in range(9):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(20):
                call()
            torch.cuda.synchronize()
            rounds.append((time.perf_counter() - start) / 20)
        tflops = flops / sorted(rounds)[len(rounds) // 2] / 1e12
        ratio = f", tailor / torch {ours / tflops:.2f}x" if ours else ""
        print(f"torch SDPA {torch.__version__}, {name}: {tflops:.1f} TFLOP/s{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

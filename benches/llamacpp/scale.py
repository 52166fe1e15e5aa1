"""tailor against llama.cpp at the sizes people run, every weight type, same
machine, same run (benches/llamacpp/run.sh scale drives it).

  scale.py quantize F16.gguf OUTDIR TYPE...   llama.cpp's own quantizer writes OUTDIR/NAME-TYPE.gguf
  scale.py same-bytes TAILOR_FILE LLAMA_FILE  identical blocks counted per tensor and type (quantizers agree?)
  scale.py error F16.gguf TAILOR_FILE LLAMA_FILE [--tensor NAME]
        both quantizers' relative RMS error against the f16 weights, on one tensor
  scale.py bench TAILOR_BIN GGUF... [--threads 2] [--rounds 3]
        per file: prefill (128 tokens) and decode (32 tokens) tok/s, alternating
        engines round by round, medians and ratios, decode's effective
        bandwidth (weight bytes per token x tok/s) against a copy bandwidth
        measured at the start on the same number of threads (read + write
        bytes, as STREAM counts them) and against a read bandwidth measured
        right after the file's rounds (a decode only reads its weights; on a
        shared VM the memory's speed moves between minutes), and both engines'
        peak RSS (llama.cpp in a child process per run).
  scale.py greedy TAILOR_BIN GGUF [--kv f16|f32] [--self] [--all-prompts]
        greedy token ids of both engines compared (--self: llama.cpp with an
        f16 KV cache against itself with an f32 one; --all-prompts: ten
        prompts, both comparisons, equal tokens summed), with llama.cpp's
        top-2 logit gap where they part.
"""
import argparse, ctypes, os, subprocess, sys, threading, time
from pathlib import Path

import numpy as np

FILLER = b"The quick brown fox jumps over the lazy dog while the river flows past old stone bridges and quiet towns. "
# llama.cpp's file types (llama_ftype) by the names its quantize tool takes.
FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
          "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30, "BF16": 32}


def quantize(args):
    import llama_cpp
    out = Path(args.outdir)
    for name in args.types:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[name]
        params.nthread = 2
        target = out / f"{Path(args.f16).stem.removesuffix('-f16')}-{name.lower()}.gguf"
        start = time.perf_counter()
        rc = llama_cpp.llama_model_quantize(args.f16.encode(), str(target).encode(), ctypes.byref(params))
        print(f"{target.name}: rc {rc}, {time.perf_counter() - start:.0f} s, {target.stat().st_size / 1e9:.2f} GB")


def same_bytes(args):
    """Tensor by tensor, how many quantized blocks two files hold identically (the quantizers agree?)."""
    from gguf import GGUFReader, GGML_QUANT_SIZES
    ours, theirs = GGUFReader(args.tailor_file), GGUFReader(args.llama_file)
    theirs_by_name = {t.name: t for t in theirs.tensors}
    totals = {}
    for t in ours.tensors:
        other = theirs_by_name[t.name]
        if t.tensor_type != other.tensor_type:
            print(f"  {t.name}: {t.tensor_type.name} vs {other.tensor_type.name}, not compared")
            continue
        block_bytes = GGML_QUANT_SIZES[t.tensor_type][1]
        a = np.asarray(t.data).ravel().view(np.uint8).reshape(-1, block_bytes)
        b = np.asarray(other.data).ravel().view(np.uint8).reshape(-1, block_bytes)
        same = int((a == b).all(axis=1).sum())
        kind = totals.setdefault(t.tensor_type.name, [0, 0])
        kind[0] += same
        kind[1] += a.shape[0]
        if same != a.shape[0]:
            print(f"  {t.name}: {t.tensor_type.name}, {a.shape[0] - same} of {a.shape[0]} blocks differ")
    for name, (same, total) in totals.items():
        print(f"{name}: {same} of {total} blocks byte-identical ({100 * same / total:.3f} %)")


def quant_error(args):
    """Relative RMS error of one tensor as each file quantized it, against the f16 original
    (dequantized by gguf-py): how tailor's quantizer compares with llama.cpp's."""
    from gguf import GGUFReader, GGMLQuantizationType, dequantize

    def values(path):
        tensor = next(t for t in GGUFReader(path).tensors if t.name == args.tensor)
        kind = GGMLQuantizationType(tensor.tensor_type).name
        return kind, dequantize(np.asarray(tensor.data), tensor.tensor_type).astype(np.float64).ravel()

    _, exact = values(args.f16)
    errors = []
    for label, path in (("tailor", args.tailor_file), ("llama.cpp", args.llama_file)):
        kind, got = values(path)
        errors.append(np.sqrt(((got - exact) ** 2).sum() / (exact ** 2).sum()))
        print(f"{args.tensor}: {label} {kind} relative RMS error {errors[-1]:.4f}")
    print(f"ratio tailor / llama.cpp: {errors[0] / errors[1]:.2f}")


def copy_bandwidth(threads, mib=512):
    """GB/s of `threads` threads each copying its own buffer (numpy releases the GIL)."""
    bufs = [(np.ones(mib << 18, dtype=np.float32), np.empty(mib << 18, dtype=np.float32)) for _ in range(threads)]
    for src, dst in bufs:
        np.copyto(dst, src)

    def run(src, dst):
        for _ in range(4):
            np.copyto(dst, src)
    start = time.perf_counter()
    workers = [threading.Thread(target=run, args=pair) for pair in bufs]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - start
    return threads * 4 * 2 * (mib << 20) / seconds / 1e9  # read + write


def read_bandwidth(threads, mib=512, rounds=3):
    """GB/s of `threads` threads each reading its own buffer (an OR reduction,
    numpy releases the GIL), best of `rounds`: the ceiling of a decode, which
    reads its weights and writes next to nothing."""
    bufs = [np.ones(mib << 17, dtype=np.uint64) for _ in range(threads)]
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        workers = [threading.Thread(target=np.bitwise_or.reduce, args=(buf,)) for buf in bufs]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return threads * (mib << 20) / best / 1e9


def llama_run(path, threads):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    toks = llm.tokenize(FILLER * 10, add_bos=False)[:128]
    llm.reset()
    start = time.perf_counter()
    llm.eval(toks)
    prefill = 128 / (time.perf_counter() - start)
    logits = lambda: np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    nxt = int(np.argmax(logits()))
    start = time.perf_counter()
    for _ in range(32):
        llm.eval([nxt])
        nxt = int(np.argmax(logits()))
    decode = 32 / (time.perf_counter() - start)
    peak = peak_rss_mib()  # before the model is freed: the kernel's high-water mark can miss an unmapped peak
    del llm
    return prefill, decode, peak


def peak_rss_mib():
    """This process's peak resident set (VmHWM), MiB."""
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def llama_child(args):
    """One llama.cpp run in a process of its own (as tailor's runs are):
    prefill and decode tok/s, and its peak RSS in MiB above what the
    interpreter and the imported library held before the model loaded."""
    import json
    import llama_cpp  # noqa: F401  (imported before the baseline)
    base = peak_rss_mib()
    prefill, decode, peak = llama_run(args.gguf, args.threads)
    print(json.dumps({"prefill": prefill, "decode": decode, "rss_mib": peak - base, "base_mib": base}))


def llama_run_apart(path, threads):
    import json
    out = subprocess.run([sys.executable, __file__, "llama-child", path, "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["prefill"], r["decode"], r["rss_mib"]


def llama_greedy(path, prompt, tokens, threads, kv):
    """llama.cpp's greedy continuation of `prompt` with a `kv` (f16 or f32) KV
    cache: (prompt token count, token ids, its top-2 logit gap at each step)."""
    import llama_cpp
    from llama_cpp import Llama
    kv_type = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[kv]
    llm = Llama(model_path=path, n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False,
                type_k=kv_type, type_v=kv_type)
    toks = llm.tokenize(prompt.encode(), add_bos=False)
    llm.eval(toks)
    logits = lambda: np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    ids, margins = [], []
    for _ in range(tokens):
        row = logits()
        top2 = np.sort(row)[-2:]
        margins.append(float(top2[1] - top2[0]))
        ids.append(int(np.argmax(row)))
        llm.eval([ids[-1]])
    return len(toks), ids, margins


def first_difference(a, b):
    """Index of the first differing token id, or the shorter length."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# Prompts of `greedy --all-prompts`: one path per prompt is one draw of where
# the top two logits first lie within rounding of each other.
GREEDY_PROMPTS = ["The history of the city begins", "Once upon a time, in a small village,",
                  "The best way to learn programming is", "Water boils at a temperature of", "In 1969, the first humans",
                  "A good breakfast should include", "The main causes of the French Revolution were",
                  "To make bread you need", "The capital of France is", "Machine learning models are trained by"]


def tailor_greedy(args, prompt):
    """tailor's greedy token ids for `prompt`."""
    import json
    out = subprocess.run([args.tailor, "generate", "--model", args.gguf, "--prompt", prompt, "--max-tokens",
                          str(args.tokens), "--logprobs", "1", "--threads", str(args.threads)],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line)["id"] for line in out.splitlines() if line.startswith("{")]


def greedy(args):
    """Greedy continuations of the same prompt by both engines, token ids compared.
    `--kv f32` gives llama.cpp an f32 KV cache (its default is f16; tailor's
    CPU cache is f32): on a random model, whose top two logits often lie
    within rounding of each other, that alone moves llama.cpp's own path.
    `--self` compares llama.cpp with itself, f16 against f32 KV cache: how
    far two runs of one engine that differ only in that rounding agree.
    `--all-prompts` runs every prompt of GREEDY_PROMPTS and both comparisons
    (tailor against llama.cpp, and llama.cpp against itself with the other
    KV cache type, the yardstick), and sums the equal tokens."""
    prompts = GREEDY_PROMPTS if args.all_prompts else [args.prompt]
    other = "f32" if args.kv == "f16" else "f16"
    print(f"{args.gguf}: {args.tokens} greedy tokens per prompt, llama.cpp KV cache {args.kv}")
    equal = {"tailor": 0, "self": 0}
    for prompt in prompts:
        prompt_tokens, theirs, margins = llama_greedy(args.gguf, prompt, args.tokens, args.threads, args.kv)
        compared = {}
        if args.self_check or args.all_prompts:
            compared["self"] = llama_greedy(args.gguf, prompt, args.tokens, args.threads, other)[1]
        if not args.self_check:
            compared["tailor"] = tailor_greedy(args, prompt)
        print(f"  {prompt!r} ({prompt_tokens} tokens; smallest top-2 logit gap along llama.cpp's path {min(margins):.4f})")
        for who, ids in compared.items():
            same = first_difference(ids, theirs)
            equal[who] += same
            name = "tailor" if who == "tailor" else f"llama.cpp with an {other} KV cache"
            # One side may stop early (an end-of-text token): then they part where it ended.
            at = lambda seq: str(seq[same]) if same < len(seq) else "(ended)"
            print(f"    {name}: equal for {same} of {args.tokens}"
                  + ("" if same == args.tokens else f"; at {same}: {at(ids)} vs llama.cpp {at(theirs)}, "
                     f"llama.cpp's top-2 logit gap there {margins[same]:.4f}"))
    if len(prompts) > 1:
        total = args.tokens * len(prompts)
        print(f"  tokens equal before the first difference, all prompts: tailor {equal['tailor']} of {total}; "
              f"llama.cpp with an {other} KV cache {equal['self']} of {total}")
    who = "self" if args.self_check else "tailor"
    return equal[who] == args.tokens * len(prompts)


def tailor_run(binary, path, threads):
    import json
    out = subprocess.run([binary, "bench", "--model", path, "--threads", str(threads), "--repeat", "1",
                          "--prompt-tokens", "128", "--gen-tokens", "32", "--json"],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return r["prefill_tok_s"], r["decode_tok_s"], r["peak_rss_mib"]


def weight_bytes_per_token(path):
    """Bytes of every tensor but the token embedding (a decode step reads one row of it)."""
    from gguf import GGUFReader
    reader = GGUFReader(path)
    total = sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    if tied:  # the output projection reads the whole embedding
        total += sum(int(t.n_bytes) for t in reader.tensors if t.name == "token_embd.weight")
    return total


def bench(args):
    copy = copy_bandwidth(args.threads)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"CPU {cpu}; {args.threads} threads; copy bandwidth {copy:.1f} GB/s (read + write)")
    print(subprocess.run([args.tailor, "cpu"], capture_output=True, text=True).stdout, end="")
    print(f"{'file':28s} {'prefill t/l':>18s} {'ratio':>6s} {'decode t/l':>14s} {'ratio':>6s} "
          f"{'GB/s':>6s} {'% copy':>6s} {'read':>5s} {'% read':>6s} {'RSS MiB t/l':>14s}  {'round ratios p, d':>20s}")
    for path in args.gguf:
        rows = {"tailor": [], "llama": []}
        rss = their_rss = 0
        for _ in range(args.rounds):
            p, d, their_rss = llama_run_apart(path, args.threads)
            rows["llama"].append((p, d))
            p, d, rss = tailor_run(args.tailor, path, args.threads)
            rows["tailor"].append((p, d))
        med = {k: (float(np.median([v[0] for v in vs])), float(np.median([v[1] for v in vs]))) for k, vs in rows.items()}
        (tp, td), (lp, ld) = med["tailor"], med["llama"]
        gbs = weight_bytes_per_token(path) * td / 1e9
        read = read_bandwidth(args.threads)
        spread = [f"{min(r):.2f}-{max(r):.2f}" for r in round_ratios(rows)]
        print(f"{Path(path).name:28s} {tp:8.1f} / {lp:7.1f} {tp / lp:5.2f}x {td:6.1f} / {ld:5.1f} {td / ld:5.2f}x "
              f"{gbs:6.1f} {100 * gbs / copy:5.0f}% {read:5.1f} {100 * gbs / read:5.0f}% {rss:6.0f} / {their_rss:5.0f}  {spread[0]:>9s} {spread[1]:>9s}",
              flush=True)
    print("RSS: peak resident MiB of the whole tailor process / of llama.cpp's, above the Python "
          "interpreter and library it runs in")
    print("GB/s: decode's weight bytes per token x tok/s; read: GB/s of the threads reading memory, "
          "measured after the file's rounds")
    print("round ratios: the lowest and highest tailor/llama.cpp ratio of a single round (its two runs "
          "back to back), prefill then decode: how far this machine's noise moves one comparison")


def round_ratios(rows):
    """Per round, tailor's figure over llama.cpp's: ([prefill ratios], [decode ratios])."""
    pairs = list(zip(rows["tailor"], rows["llama"]))
    return [t[0] / l[0] for t, l in pairs], [t[1] / l[1] for t, l in pairs]


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize"); q.add_argument("f16"); q.add_argument("outdir"); q.add_argument("types", nargs="+")
    s = sub.add_parser("same-bytes"); s.add_argument("tailor_file"); s.add_argument("llama_file")
    e = sub.add_parser("error"); e.add_argument("f16"); e.add_argument("tailor_file"); e.add_argument("llama_file")
    e.add_argument("--tensor", default="blk.3.ffn_up.weight")
    b = sub.add_parser("bench"); b.add_argument("tailor"); b.add_argument("gguf", nargs="+")
    b.add_argument("--threads", type=int, default=2); b.add_argument("--rounds", type=int, default=3)
    g = sub.add_parser("greedy"); g.add_argument("tailor"); g.add_argument("gguf")
    g.add_argument("--prompt", default="The history of the city begins"); g.add_argument("--tokens", type=int, default=32)
    g.add_argument("--threads", type=int, default=2); g.add_argument("--kv", choices=["f16", "f32"], default="f16")
    g.add_argument("--self", dest="self_check", action="store_true",
                   help="compare llama.cpp with itself (the other KV cache type) instead of tailor")
    g.add_argument("--all-prompts", action="store_true",
                   help="every prompt of GREEDY_PROMPTS, tailor and llama.cpp's other KV cache type both compared")
    c = sub.add_parser("llama-child"); c.add_argument("gguf"); c.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.cmd == "greedy":
        sys.exit(0 if greedy(args) else 1)
    commands = {"quantize": quantize, "same-bytes": same_bytes, "error": quant_error, "bench": bench,
                "llama-child": llama_child}
    commands[args.cmd](args)


if __name__ == "__main__":
    main()

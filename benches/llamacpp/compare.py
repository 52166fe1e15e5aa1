"""tailor against llama.cpp (llama-cpp-python) on the same GGUF, same machine, same run.

  compare.py top5  GGUF OUT.json   next-token top-10 of llama.cpp for tests/reference/prompts.json
  compare.py bench GGUF TAILOR_BIN [--threads 2] [--rounds 3]
                                   prefill (128-token prompt) and decode (64 tokens) tok/s,
                                   alternating the two engines, ratios printed
"""
import argparse, json, math, subprocess, time
from pathlib import Path

import numpy as np
from llama_cpp import Llama

FILLER = b"The quick brown fox jumps over the lazy dog while the river flows past old stone bridges and quiet towns. "
ROOT = Path(__file__).resolve().parents[2]


def last_logits(llm):
    """Logits of the last evaluated position (llama-cpp-python keeps only
    these when logits_all is off)."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)


def chat_text(chat):
    # The SmolLM2 template (ChatML; default system prompt when none is given).
    system = chat["system"] or "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{chat['user']}<|im_end|>\n"
            "<|im_start|>assistant\n")


def top5(args):
    llm = Llama(model_path=args.gguf, n_ctx=512, n_threads=2, logits_all=False, verbose=False)
    prompts = json.loads((ROOT / "tests/reference/prompts.json").read_text())
    texts = prompts["plain"] + [chat_text(c) for c in prompts["chat"]]
    cases = []
    for text in texts:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        logits = last_logits(llm)
        logprobs = logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
        order = np.argsort(-logprobs)[:10]
        cases.append({"text": text, "ids": ids, "top10": [int(t) for t in order],
                      "logprobs": [float(logprobs[t]) for t in order]})
        print(repr(text[:40]), [llm.detokenize([int(t)]).decode(errors="replace") for t in order[:5]])
    Path(args.out).write_text(json.dumps({"engine": "llama.cpp via llama-cpp-python", "cases": cases}, indent=1))


def llama_bench(llm, threads):
    toks = llm.tokenize(FILLER * 10, add_bos=False)[:128]
    llm.reset()
    start = time.perf_counter()
    llm.eval(toks)
    prefill = time.perf_counter() - start
    nxt = int(np.argmax(last_logits(llm)))
    start = time.perf_counter()
    for _ in range(64):
        llm.eval([nxt])
        nxt = int(np.argmax(last_logits(llm)))
    return 128 / prefill, 64 / (time.perf_counter() - start)


def tailor_bench(binary, gguf, threads):
    out = subprocess.run([binary, "bench", "--model", gguf, "--threads", str(threads), "--repeat", "1", "--json"],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return r["prefill_tok_s"], r["decode_tok_s"], r["peak_rss_mib"]


def bench(args):
    print(subprocess.run([args.tailor, "cpu"], capture_output=True, text=True).stdout, end="")
    llm = Llama(model_path=args.gguf, n_ctx=512, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    rows = {"tailor": [], "llama.cpp": []}
    for r in range(args.rounds):
        rows["llama.cpp"].append(llama_bench(llm, args.threads))
        p, d, rss = tailor_bench(args.tailor, args.gguf, args.threads)
        rows["tailor"].append((p, d))
        print(f"round {r + 1}: tailor prefill {p:7.1f} decode {d:6.1f} | "
              f"llama.cpp prefill {rows['llama.cpp'][-1][0]:7.1f} decode {rows['llama.cpp'][-1][1]:6.1f}")
    med = {k: (float(np.median([v[0] for v in vs])), float(np.median([v[1] for v in vs]))) for k, vs in rows.items()}
    print(f"median over {args.rounds} rounds, {args.threads} threads, SmolLM2-135M Q4_1:")
    for k, (p, d) in med.items():
        print(f"  {k:10s} prefill {p:7.1f} tok/s   decode {d:6.1f} tok/s")
    print(f"  ratio      prefill {med['tailor'][0] / med['llama.cpp'][0]:.2f}x       "
          f"decode {med['tailor'][1] / med['llama.cpp'][1]:.2f}x   (tailor peak RSS {rss:.0f} MiB)")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("top5"); t.add_argument("gguf"); t.add_argument("out")
    b = sub.add_parser("bench"); b.add_argument("gguf"); b.add_argument("tailor")
    b.add_argument("--threads", type=int, default=2); b.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    top5(args) if args.cmd == "top5" else bench(args)


if __name__ == "__main__":
    main()

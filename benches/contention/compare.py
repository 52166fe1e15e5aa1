"""How tailor and llama.cpp share a busy CPU: prefill and decode tok/s of
each, alone and with one competing busy process (a pure-Python spin loop),
same GGUF, same threads, conditions and engines alternating in one run.
Prints each engine's contended/alone ratio and tailor's ratio over
llama.cpp's (>= 1.0: tailor degrades no worse).

  compare.py GGUF TAILOR_BIN [--threads 2] [--rounds 3]
"""
import argparse, subprocess, sys, time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llamacpp"))
from compare import llama_bench, tailor_bench  # noqa: E402
from llama_cpp import Llama  # noqa: E402

BUSY = "while True: pass"


def measure(llm, args):
    llama = llama_bench(llm, args.threads)
    prefill, decode, _ = tailor_bench(args.tailor, args.gguf, args.threads)
    return {"tailor": (prefill, decode), "llama.cpp": llama}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf"); ap.add_argument("tailor")
    ap.add_argument("--threads", type=int, default=2); ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo; nproc"], capture_output=True, text=True).stdout)
    print(subprocess.run([args.tailor, "cpu"], capture_output=True, text=True).stdout, end="")
    llm = Llama(model_path=args.gguf, n_ctx=512, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    runs = {"alone": [], "busy": []}
    for r in range(args.rounds):
        for condition in ("alone", "busy"):
            spinner = subprocess.Popen([sys.executable, "-c", BUSY]) if condition == "busy" else None
            try:
                time.sleep(0.3)
                runs[condition].append(measure(llm, args))
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()
            m = runs[condition][-1]
            print(f"round {r + 1} {condition:5s}: tailor prefill {m['tailor'][0]:7.1f} decode {m['tailor'][1]:6.1f} | "
                  f"llama.cpp prefill {m['llama.cpp'][0]:7.1f} decode {m['llama.cpp'][1]:6.1f}", flush=True)
    med = {c: {e: [float(np.median([m[e][i] for m in ms])) for i in (0, 1)] for e in ("tailor", "llama.cpp")}
           for c, ms in runs.items()}
    print(f"\nmedians over {args.rounds} rounds, {args.threads} threads, one competing busy process:")
    for i, phase in enumerate(("prefill", "decode")):
        kept = {e: med["busy"][e][i] / med["alone"][e][i] for e in ("tailor", "llama.cpp")}
        print(f"  {phase:7s} tailor {med['alone']['tailor'][i]:7.1f} -> {med['busy']['tailor'][i]:7.1f} ({kept['tailor']:.2f}x)"
              f"   llama.cpp {med['alone']['llama.cpp'][i]:7.1f} -> {med['busy']['llama.cpp'][i]:7.1f} ({kept['llama.cpp']:.2f}x)"
              f"   ratio of ratios {kept['tailor'] / kept['llama.cpp']:.2f}")


if __name__ == "__main__":
    main()

"""Aggregate decode throughput of tailord: 1 request alone vs N concurrent.

  concurrency.py BASE_URL MODEL [--clients 8] [--tokens 128] [--rounds 3]

Streams N chat completions at once (greedy, fixed length: the prompts ask for
long stories) and prints, for one request and for N together:
- output tok/s: all generated tokens / wall time (prefills included);
- decode tok/s: tokens streamed while every stream was past its first token
  and none had finished (pure decode steps of the whole batch) / that window.
Rounds alternate 1 and N so machine noise hits both. Standard library only.
"""
import argparse, json, statistics, threading, time, urllib.request


def stream(base, model, prompt, tokens, stamps):
    body = json.dumps({"model": model, "stream": True, "max_tokens": tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    req = urllib.request.Request(f"{base}/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        for line in resp:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    stamps.append(time.perf_counter())


def run(base, model, clients, tokens):
    stamps = [[] for _ in range(clients)]
    threads = [threading.Thread(target=stream, args=(base, model, f"Write a long story about a robot number {i}.",
                                                     tokens, stamps[i])) for i in range(clients)]
    start = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    output = sum(map(len, stamps)) / (time.perf_counter() - start)
    window = (max(s[0] for s in stamps), min(s[-1] for s in stamps))
    inside = sum(1 for s in stamps for t in s if window[0] < t <= window[1])
    decode = inside / (window[1] - window[0]) if window[1] > window[0] else float("nan")
    return output, decode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base"); ap.add_argument("model")
    ap.add_argument("--clients", type=int, default=8); ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    run(a.base, a.model, 1, 8)  # warm up
    ones, manys = [], []
    for _ in range(a.rounds):
        ones.append(run(a.base, a.model, 1, a.tokens))
        manys.append(run(a.base, a.model, a.clients, a.tokens))
    for i, what in enumerate(["output", "decode"]):
        one = statistics.median(r[i] for r in ones)
        many = statistics.median(r[i] for r in manys)
        print(f"{what:>6} tok/s: 1 request {one:6.1f}; {a.clients} concurrent {many:6.1f} aggregate; "
              f"ratio {many / one:.2f}x (median of {a.rounds} alternating rounds)")


if __name__ == "__main__":
    main()

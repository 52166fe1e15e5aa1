"""Aggregate decode throughput of tailord: 1 request alone vs N concurrent.

  concurrency.py BASE_URL MODEL [--clients 8] [--tokens 64]
Streams N chat completions at once (greedy, fixed length) and prints
generated tokens per second for one request and for N together, and the ratio.
Standard library only.
"""
import argparse, json, threading, time, urllib.request


def stream(base, model, prompt, tokens):
    body = json.dumps({"model": model, "stream": True, "max_tokens": tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    req = urllib.request.Request(f"{base}/v1/chat/completions", body, {"Content-Type": "application/json"})
    count = 0
    with urllib.request.urlopen(req) as resp:
        for line in resp:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                count += 1 if delta.get("content") else 0
    return count


def run(base, model, clients, tokens):
    counts = [0] * clients
    def worker(i):
        counts[i] = stream(base, model, f"Write a long story about a robot number {i}.", tokens)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    return sum(counts) / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base"); ap.add_argument("model")
    ap.add_argument("--clients", type=int, default=8); ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    run(a.base, a.model, 1, 8)  # warm up
    one = run(a.base, a.model, 1, a.tokens)
    many = run(a.base, a.model, a.clients, a.tokens)
    print(f"1 request: {one:.1f} tok/s; {a.clients} concurrent: {many:.1f} tok/s aggregate; ratio {many / one:.2f}x")


if __name__ == "__main__":
    main()

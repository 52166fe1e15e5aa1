"""Soak test of a running tailord: many concurrent streaming chats mixed
with embedding calls and bad requests, for a fixed time; prints errors,
time to first token (p50/p99), requests refused with 429, and tailord's
resident memory (from /metrics) at the start, its peak and the end.

  soak.py BASE_URL CHAT_MODEL EMBED_MODEL [--clients 64] [--seconds 600] [--token T]

Every loop is bounded in time and sends only to BASE_URL (loopback).
Standard library only. Exits non-zero when an unexpected error happened.
"""
import argparse, json, random, threading, time, urllib.error, urllib.request

BAD_BODIES = [b"{not json", b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}',
              b'{"model": "MODEL", "messages": []}', b'{"model": "MODEL", "messages": [{"role": "user"}], "top_p": 0}']


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ttft, self.counts, self.unexpected = [], {}, []

    def add(self, kind, ttft=None, unexpected=None):
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if ttft is not None:
                self.ttft.append(ttft)
            if unexpected:
                self.unexpected.append(unexpected)


def post(base, path, body, headers, timeout=120):
    req = urllib.request.Request(f"{base}{path}", body, {"Content-Type": "application/json", **headers})
    return urllib.request.urlopen(req, timeout=timeout)


def chat(base, model, headers, tally, rng):
    body = json.dumps({"model": model, "stream": True, "max_tokens": rng.randint(8, 64), "temperature": 0.7,
                       "messages": [{"role": "user", "content": f"Tell me about the number {rng.randint(0, 10**6)}."}]})
    start = time.perf_counter()
    try:
        with post(base, "/v1/chat/completions", body.encode(), headers) as resp:
            first = None
            for line in resp:
                if first is None and line.startswith(b"data: "):
                    first = time.perf_counter() - start
            tally.add("chat", ttft=first)
    except urllib.error.HTTPError as e:
        tally.add("chat 429" if e.code == 429 else f"chat {e.code}", unexpected=None if e.code == 429 else e.code)


def embed(base, model, headers, tally, rng):
    texts = [f"passage {rng.random()}" * rng.randint(1, 20) for _ in range(rng.randint(1, 16))]
    try:
        with post(base, "/v1/embeddings", json.dumps({"model": model, "input": texts}).encode(), headers) as resp:
            resp.read()
            tally.add("embed")
    except urllib.error.HTTPError as e:
        tally.add(f"embed {e.code}", unexpected=None if e.code == 429 else e.code)


def bad(base, model, headers, tally, rng):
    body = rng.choice(BAD_BODIES).replace(b"MODEL", model.encode())
    try:
        post(base, "/v1/chat/completions", body, headers).read()
        tally.add("bad accepted", unexpected="a bad request was accepted")
    except urllib.error.HTTPError as e:
        tally.add("bad 4xx" if 400 <= e.code < 500 else f"bad {e.code}",
                  unexpected=None if 400 <= e.code < 500 else e.code)


def rss(base, headers):
    req = urllib.request.Request(f"{base}/metrics", headers=headers)
    for line in urllib.request.urlopen(req, timeout=30).read().decode().splitlines():
        if line.startswith("tailor_resident_memory_bytes"):
            return int(float(line.split()[-1]))
    return 0


def client(args, headers, tally, deadline, seed):
    rng = random.Random(seed)
    while time.time() < deadline:
        pick = rng.random()
        try:
            if pick < 0.7:
                chat(args.base, args.chat, headers, tally, rng)
            elif pick < 0.9:
                embed(args.base, args.embed, headers, tally, rng)
            else:
                bad(args.base, args.chat, headers, tally, rng)
        except Exception as e:  # connection errors are what a soak looks for
            tally.add("connection error", unexpected=repr(e))
            time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base"); ap.add_argument("chat"); ap.add_argument("embed")
    ap.add_argument("--clients", type=int, default=64); ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--token")
    args = ap.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    tally, samples = Tally(), [rss(args.base, headers)]
    deadline = time.time() + args.seconds
    threads = [threading.Thread(target=client, args=(args, headers, tally, deadline, i)) for i in range(args.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(5)
        samples.append(rss(args.base, headers))
    ttft = sorted(t for t in tally.ttft if t is not None)
    p = lambda q: ttft[min(len(ttft) - 1, int(q * len(ttft)))] if ttft else float("nan")
    mib = lambda b: b / 2**20
    print(f"{args.clients} clients for {args.seconds:.0f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.counts.items())))
    print(f"time to first token: p50 {p(0.5):.2f} s, p99 {p(0.99):.2f} s over {len(ttft)} streams")
    print(f"tailord RSS: start {mib(samples[0]):.0f} MiB, peak {mib(max(samples)):.0f} MiB, end {mib(samples[-1]):.0f} MiB")
    print(f"unexpected errors: {len(tally.unexpected)}" + (f" (first: {tally.unexpected[0]})" if tally.unexpected else ""))
    raise SystemExit(1 if tally.unexpected else 0)


if __name__ == "__main__":
    main()

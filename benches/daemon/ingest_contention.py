"""Chat decode speed of a running tailord alone and while an index ingest
runs in the same daemon (both stages want the CPU). Prints both rates and
their ratio (the goal: at least 0.5).

  ingest_contention.py BASE_URL CHAT_MODEL [--tokens 128] [--rounds 3] [--token T]

The daemon needs an `index` stage (inline documents are used, so no
document_roots are needed). Creates an index named `ingest-bench-N`.
Standard library only; every loop is bounded.
"""
import argparse, json, statistics, threading, time, urllib.error, urllib.request

WORDS = ("river stone bridge lantern harbour meadow engine signal archive orchard "
         "valley copper thunder glacier compass ribbon").split()


def post(base, path, body, headers, timeout=600):
    req = urllib.request.Request(f"{base}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def decode_rate(base, model, tokens, headers):
    """Tokens per second between a stream's first and last token."""
    body = {"model": model, "stream": True, "max_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]}
    req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **headers})
    stamps = []
    with urllib.request.urlopen(req, timeout=600) as resp:
        for line in resp:
            if line.startswith(b"data: {"):
                stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 2 else float("nan")


def ingest_until(base, index, stop, headers, done):
    batch = 0
    while not stop.is_set():
        docs = [{"id": f"b{batch}-d{i}", "text": " ".join(WORDS[(i * 7 + j + batch) % len(WORDS)] for j in range(600))}
                for i in range(64)]
        post(base, f"/v1/indexes/{index}/documents", {"documents": docs}, headers)
        done.append(len(docs))
        batch += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base"); ap.add_argument("chat")
    ap.add_argument("--tokens", type=int, default=128); ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--token")
    args = ap.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    index = f"ingest-bench-{int(time.time())}"
    post(args.base, "/v1/indexes", {"name": index}, headers)
    alone, beside, ingested = [], [], []
    for r in range(args.rounds):
        alone.append(decode_rate(args.base, args.chat, args.tokens, headers))
        stop = threading.Event()
        ingest = threading.Thread(target=ingest_until, args=(args.base, index, stop, headers, ingested))
        ingest.start()
        time.sleep(1.0)  # the ingest is embedding by now
        beside.append(decode_rate(args.base, args.chat, args.tokens, headers))
        stop.set()
        ingest.join()
        print(f"round {r + 1}: chat decode alone {alone[-1]:6.1f} tok/s, during ingest {beside[-1]:6.1f} tok/s", flush=True)
    a, b = statistics.median(alone), statistics.median(beside)
    print(f"median: alone {a:.1f} tok/s, during ingest {b:.1f} tok/s -> kept {b / a:.2f} "
          f"({sum(ingested)} documents ingested meanwhile)")


if __name__ == "__main__":
    main()

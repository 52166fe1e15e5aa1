"""tailor's encoder against sentence-transformers (torch CPU), same machine, same run.

Embeds the NegConstraint corpus (3,946 passages, all-MiniLM-L6-v2, max_seq_length 256)
with both, on the same number of threads, and prints passages/s and the ratio.
  compare.py TAILOR_BIN MODEL_DIR DATA_DIR [--threads 2]
"""
import argparse, json, subprocess, time

import torch
from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tailor"); ap.add_argument("model"); ap.add_argument("data")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = [json.loads(l)["text"] for l in open(f"{args.data}/corpus.jsonl")]
    model = SentenceTransformer(args.model, device="cpu")
    start = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    st = len(texts) / (time.perf_counter() - start)
    out = subprocess.run([args.tailor, "--threads", str(args.threads), "eval", "retrieval", "--json",
                          "--corpus", f"{args.data}/corpus.jsonl", "--queries", f"{args.data}/queries.jsonl",
                          "--qrels", f"{args.data}/qrels/test.tsv", "--model", args.model],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    print(f"{len(texts)} passages, {args.threads} threads")
    print(f"  sentence-transformers {st:7.1f} passages/s (torch {torch.__version__})")
    print(f"  tailor                {r['passages_per_second']:7.1f} passages/s")
    print(f"  ratio                 {r['passages_per_second'] / st:.2f}x")
    print(f"  tailor search latency (embed query + flat search): p50 {r['search_p50_ms']:.2f} ms, p99 {r['search_p99_ms']:.2f} ms")
    print(f"  tailor nDCG@10 {r['metrics']['ndcg']:.4f}, recall@10 {r['metrics']['recall']:.4f}")


if __name__ == "__main__":
    main()

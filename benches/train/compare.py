"""Fine-tuning speed and memory: tailor vs PEFT + torch on the CPU.

Both train SmolLM2-135M-Instruct (the converted f32 folder; tailor also on
the Q4_1 GGUF, its QLoRA path; then both with the base in bf16, whose
products run in bf16 on CPUs with AVX-512 BF16) with LoRA r=8, alpha 16 on
q_proj and v_proj, AdamW, 4 examples of 128 tokens per step (plain text from this repository's
docs, loss on every token), on the same threads; then full fine-tuning
(every weight, AdamW) in torch and in tailor, and in tailor with 8-bit
AdamW moments (`--optim adamw-8bit`; torch has no 8-bit optimizer on the
CPU, so its row is f32 AdamW). Each tool runs in its own
process (peak RSS is the process's); steps after the first are timed.
Prints seconds per step, the ratio torch/tailor (above 1: tailor is faster)
and peak RSS.
"""
import argparse, json, os, platform, resource, subprocess, sys, tempfile, time
from pathlib import Path

SEQ, BATCH = 128, 4


def texts(root: Path, count: int):
    """Paragraph runs of the repo's docs, each long enough for SEQ tokens."""
    words = []
    for name in ["ARCHITECTURE.md", "README.md", "../shared/DESIGN.md"]:
        path = root / name
        if path.exists():
            words += path.read_text().split()
    chunk = 160
    out = [" ".join(words[i:i + chunk]) for i in range(0, len(words) - chunk, chunk)]
    return (out * (count // max(len(out), 1) + 1))[:count]


def peft_child(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(args.threads)
    folder = Path(args.models) / "SmolLM2-135M-Instruct-hf"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype))
    if not args.full:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = json.loads(Path(args.data).read_text())
    ids = [tok(t, add_special_tokens=False)["input_ids"][:SEQ] for t in data]
    times = []
    for step in range(args.steps + 1):
        batch = torch.tensor(ids[step * BATCH:(step + 1) * BATCH])
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": times[1:], "rss_mb": rss, "torch": torch.__version__}))


def tailor_run(tailor, model, data_file, threads, steps, extra):
    with tempfile.TemporaryDirectory() as out:
        command = [tailor, "--threads", str(threads), "train", "--model", str(model), "--data", data_file,
                   "--out", out, "--targets", "q_proj,v_proj", "--r", "8", "--alpha", "16",
                   "--batch-size", str(BATCH), "--max-tokens", str(SEQ), "--epochs", "1",
                   "--checkpoint-every", "1000000", "--lr", "1e-4"] + extra
        rss = run_measured(command)
        lines = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        seconds = [l["tokens"] / l["tokens_per_second"] for l in lines][1:steps + 1]
        return seconds, rss


def run_measured(command, env=None):
    """Runs `command` to completion; returns its own peak RSS in MB."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{command[0]} failed with status {status}")
    return usage.ru_maxrss / 1024


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("tailor")
    parser.add_argument("models")
    parser.add_argument("root")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--full", action="store_true", help="(child) every weight, no LoRA")
    parser.add_argument("--data")
    parser.add_argument("--dtype", default="float32", help="(child) the base's torch dtype")
    parser.add_argument("--groups", default="lora,bf16,full",
                        help="comma list of lora, bf16 (slow: torch has no fast bf16 path on most CPUs), full")
    args = parser.parse_args()
    if args.child:
        return peft_child(args)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    print(f"CPU: {cpu}; {args.threads} threads; LoRA r=8 on q_proj,v_proj; {BATCH}x{SEQ} tokens per step")
    print(subprocess.run([args.tailor, "cpu"], capture_output=True, text=True).stdout, end="")
    with tempfile.TemporaryDirectory() as tmp:
        data = texts(Path(args.root), BATCH * (args.steps + 1))
        data_json = Path(tmp) / "data.json"
        data_json.write_text(json.dumps(data))
        jsonl = Path(tmp) / "data.jsonl"
        jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in data))
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        def torch_run(extra):
            child = subprocess.run([sys.executable, __file__, args.tailor, args.models, args.root, "--child",
                                    "--threads", str(args.threads), "--steps", str(args.steps),
                                    "--data", str(data_json)] + extra,
                                   check=True, capture_output=True, text=True, env=env)
            return json.loads(child.stdout.strip().splitlines()[-1])

        models = Path(args.models)
        folder, gguf = models / "SmolLM2-135M-Instruct-hf", models / "SmolLM2-135M-Instruct.Q4_1.gguf"
        groups = [("lora", "PEFT LoRA", [], [("tailor LoRA (f32 folder)", folder, []),
                                     ("tailor QLoRA (Q4_1 GGUF)", gguf, ["--method", "qlora"]),
                                     ("tailor QLoRA (NF4 of f32)", folder, ["--method", "qlora"]),
                                     ("tailor QLoRA (NF4, double q.)", folder,
                                      ["--method", "qlora", "--double-quant"])]),
                  ("bf16", "PEFT LoRA bf16", ["--dtype", "bfloat16"],
                   [("tailor LoRA (bf16 base)", folder, ["--dtype", "bf16"])]),
                  ("full", "torch full", ["--full"],
                   [("tailor full (f32 folder)", folder, ["--method", "full"]),
                    ("tailor full, 8-bit AdamW", folder, ["--method", "full", "--optim", "adamw-8bit"])])]
        chosen = args.groups.split(",")
        for key, peer_name, peer_extra, runs in groups:
            if key not in chosen:
                continue
            peer = torch_run(peer_extra)
            peer_step = median(peer["seconds"])
            print(f"  {peer_name + ' ' + peer['torch']:28} {peer_step:6.3f} s/step  peak RSS {peer['rss_mb']:7.0f} MB")
            for name, model, extra in runs:
                seconds, rss = tailor_run(args.tailor, model, str(jsonl), args.threads, args.steps, extra)
                step = median(seconds)
                print(f"  {name:28} {step:6.3f} s/step  peak RSS {rss:7.0f} MB   "
                      f"speed {peer_step / step:.2f}x {peer_name}, memory {rss / peer['rss_mb']:.2f}x")


if __name__ == "__main__":
    main()

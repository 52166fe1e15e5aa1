"""How often answers follow the Bluebird support style: for each held-out
prompt in prompts.jsonl, a greedy chat answer from `tailor generate` (the
base, or with --adapter), checked for the greeting at the start and the
sign-off at the end (style.json). Prints the share for each and exits 1
when the adapter's share is below --require.

  python3 examples/style/style_check.py [--adapter DIR] [--model M] [--require 0.9]
"""
import argparse, json, subprocess, sys
from pathlib import Path

HERE = Path(__file__).parent


def answers(tailor, prompts, model, adapter, max_tokens):
    for prompt in prompts:
        command = [tailor, "generate", "--chat", "--prompt", prompt, "--max-tokens", str(max_tokens)]
        command += ["--model", model] if model else []
        command += ["--adapter", adapter] if adapter else []
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        yield out.stdout.strip()


def in_style(answer, style):
    return answer.startswith(style["greeting"]) and answer.rstrip().endswith(style["sign_off"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter")
    parser.add_argument("--model")
    parser.add_argument("--tailor", default=str(HERE.parent.parent / "target/release/tailor"))
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--require", type=float, default=0.9)
    parser.add_argument("--show", type=int, default=2, help="answers to print per run")
    args = parser.parse_args()
    style = json.loads((HERE / "style.json").read_text())
    prompts = [json.loads(l)["prompt"] for l in (HERE / "prompts.jsonl").read_text().splitlines() if l.strip()]
    runs = [("base", None)] + ([("adapter", args.adapter)] if args.adapter else [])
    shares = {}
    for name, adapter in runs:
        hits = 0
        for i, answer in enumerate(answers(args.tailor, prompts, args.model, adapter, args.max_tokens)):
            hits += in_style(answer, style)
            if i < args.show:
                print(f"[{name}] {prompts[i]!r}\n    {answer!r}")
        shares[name] = hits / len(prompts)
        print(f"{name}: {hits}/{len(prompts)} answers in style ({100 * shares[name]:.0f} %)")
    if args.adapter and shares["adapter"] < args.require:
        sys.exit(1)


if __name__ == "__main__":
    main()

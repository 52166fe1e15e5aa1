"""Reference blocks for the GGUF types tailor reads: rows that llama.cpp's
quantizer wrote, the f16 rows it quantized, and their values as gguf-py
(ggml's own Python package) dequantizes them. core/tensor/tests/quant_reference.rs
checks tailor's dequantizer, dot products and (k-quants) quantizer against them.

Run by hand (needs the llama venv: scripts/venv.sh llama llama-cpp-python numpy gguf),
with the f16 file first and files llama.cpp's quantizer made from it after:
  tailor models synth --shape 1b --layers 1 --dtype f16 target/scale/mini-f16.gguf
  target/llama-venv/bin/python benches/llamacpp/scale.py quantize target/scale/mini-f16.gguf \\
      target/scale Q2_K Q3_K_S Q4_K_S Q5_K_S Q6_K IQ4_NL IQ4_XS
  target/llama-venv/bin/python tests/reference/make_quant_blocks.py target/scale/mini-f16.gguf \\
      target/scale/mini-{q2_k,q3_k_s,q4_k_s,q5_k_s,q6_k,iq4_nl,iq4_xs}.gguf

For each type found, ROWS rows of the first tensor of that type with
2048-element rows are written to tests/reference/quant_blocks/TYPE.bin
(raw blocks), TYPE.f32 (little-endian f32 values) and TYPE.source.f16 (the
same rows of the f16 file, as quantized).
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType, dequantize

WANTED = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"}
ROWS = 4
OUT = Path(__file__).parent / "quant_blocks"


def main():
    OUT.mkdir(exist_ok=True)
    source = {t.name: t for t in GGUFReader(sys.argv[1]).tensors}
    done = set()
    for path in sys.argv[2:]:
        for tensor in GGUFReader(path).tensors:
            name = GGMLQuantizationType(tensor.tensor_type).name
            if name not in WANTED or name in done or int(tensor.shape[0]) != 2048:
                continue
            raw = np.asarray(tensor.data)[:ROWS]
            values = dequantize(raw, tensor.tensor_type).astype("<f4")
            original = np.asarray(source[tensor.name].data)[:ROWS].astype("<f2")
            assert values.shape == original.shape == (ROWS, 2048), (values.shape, original.shape)
            (OUT / f"{name.lower()}.bin").write_bytes(raw.tobytes())
            (OUT / f"{name.lower()}.f32").write_bytes(values.tobytes())
            (OUT / f"{name.lower()}.source.f16").write_bytes(original.tobytes())
            print(f"{name}: {tensor.name} from {Path(path).name}, {raw.nbytes} bytes")
            done.add(name)
    missing = WANTED - done
    if missing:
        sys.exit(f"no 2048-wide tensor of {sorted(missing)} in these files")


if __name__ == "__main__":
    main()

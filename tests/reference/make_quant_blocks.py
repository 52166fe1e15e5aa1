"""Reference blocks for the GGUF types tailor reads: rows that llama.cpp's
quantizer wrote, and their values as gguf-py (ggml's own Python package)
dequantizes them. core/tensor/tests/quant_reference.rs checks tailor's
dequantizer and dot products against them.

Run by hand (needs the llama venv: scripts/venv.sh llama llama-cpp-python numpy gguf):
  target/llama-venv/bin/python tests/reference/make_quant_blocks.py target/scale/1b-{q2_k,q3_k_m,q5_k_m,iq4_nl,iq4_xs}.gguf

For each type found, two rows of the first tensor of that type with
2048-element rows are written to tests/reference/quant_blocks/TYPE.bin
(raw blocks) and TYPE.f32 (little-endian f32 values).
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType, dequantize

WANTED = {"Q2_K", "Q3_K", "Q5_K", "IQ4_NL", "IQ4_XS"}
ROWS = 2
OUT = Path(__file__).parent / "quant_blocks"


def main():
    OUT.mkdir(exist_ok=True)
    done = set()
    for path in sys.argv[1:]:
        for tensor in GGUFReader(path).tensors:
            name = GGMLQuantizationType(tensor.tensor_type).name
            if name not in WANTED or name in done or int(tensor.shape[0]) != 2048:
                continue
            raw = np.asarray(tensor.data)[:ROWS]
            values = dequantize(raw, tensor.tensor_type).astype("<f4")
            assert values.shape == (ROWS, 2048), values.shape
            (OUT / f"{name.lower()}.bin").write_bytes(raw.tobytes())
            (OUT / f"{name.lower()}.f32").write_bytes(values.tobytes())
            print(f"{name}: {tensor.name} from {Path(path).name}, {raw.nbytes} bytes")
            done.add(name)
    missing = WANTED - done
    if missing:
        sys.exit(f"no 2048-wide tensor of {sorted(missing)} in these files")


if __name__ == "__main__":
    main()

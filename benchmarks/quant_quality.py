"""Quality of 4-bit quantization on stories260K: KL divergence from the fp32 model and
perplexity, for round-to-nearest (the baseline peer) and GPTQ, at several group sizes.

Calibration and evaluation texts are sampled from the fp32 model itself with different seeds,
so GPTQ is judged on text it was not calibrated on.

    python benchmarks/quant_quality.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import llama2rs
from llama2rs import export
from llama2rs.evaluate import evaluate

REPO = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("LLAMA2RS_MODELS") or REPO.parent / "shared" / "models")


def main() -> int:
    model_path = MODELS / "stories260K" / "stories260K.bin"
    tokenizer = MODELS / "stories260K" / "tok512.bin"
    base = llama2rs.Model(model_path, tokenizer_path=tokenizer)
    sample = lambda seeds: "\n".join(base.complete("", max_tokens=400, temperature=1.0, seed=s) for s in seeds)
    calibration, held_out = sample(range(1, 41)), sample(range(1000, 1020))
    source = export.load_source("llama2c", model_path, tokenizer)
    fp32 = evaluate(base, held_out, base=base, window=256)
    print(f"stories260K, held-out text: {fp32.n_predictions} predictions; fp32 perplexity {fp32.perplexity:.3f}")
    print(f"{'group':>6} {'method':<16} {'KL(fp32||q4)':>13} {'vs RTN':>7} {'perplexity':>11} {'top-1 agree':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for group in (32, 64, 128):
            rtn_kl = None
            for label, kwargs in (("rtn", dict(method="rtn")),
                                  ("gptq", dict(method="gptq", calibration_text=calibration)),
                                  ("gptq act-order", dict(method="gptq", calibration_text=calibration, act_order=True))):
                out = export.export(source, Path(tmp) / f"{label}-{group}.safetensors", quantize="q4",
                                    group_size=group, progress=False, **kwargs)
                r = evaluate(llama2rs.Model(out), held_out, base=base, window=256)
                rtn_kl = rtn_kl or r.kl_divergence
                print(f"{group:>6} {label:<16} {r.kl_divergence:13.5f} {r.kl_divergence / rtn_kl:6.2f}x "
                      f"{r.perplexity:11.3f} {100 * r.top1_agreement:11.1f}%")
        # What the embedding and classifier cost on top of 4-bit layers (export's --embeddings).
        print(f"\n{'embeddings':<28} {'KL(fp32||q4)':>13} {'vs float':>9} {'perplexity':>11}")
        float_kl = None
        for choice, label in (("float", "float (fp32)"), ("q8", "q8 (Q8_0, group 32: default)"),
                              ("same", "same (4-bit, group 32)")):
            out = export.export(source, Path(tmp) / f"emb-{choice}.safetensors", quantize="q4", method="rtn",
                                group_size=32, embeddings=choice, progress=False)
            r = evaluate(llama2rs.Model(out), held_out, base=base, window=256)
            float_kl = float_kl or r.kl_divergence
            print(f"{label:<28} {r.kl_divergence:13.5f} {r.kl_divergence / float_kl:8.2f}x {r.perplexity:11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

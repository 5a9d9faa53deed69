"""Code only the tests (and benchmarks/) use: random models, HF checkpoint writers and an
independent NumPy transcription of transformers' Llama. Not part of the package or the wheel."""

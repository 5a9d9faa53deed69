"""Model file formats, read into and written from :class:`llama2rs.weights.Weights` with NumPy.

* :mod:`.safetensors`: the safetensors container (one codec for the two formats below).
* :mod:`.llama2c`: llama2.c's files: legacy, v1 (fp32) and v2 (Q8_0).
* :mod:`.l2rs`: llama2rs's own file (safetensors with a config and tokenizer inside), v1 and v2.
* :mod:`.hf`: HuggingFace Llama checkpoints, float or GPTQ (AutoGPTQ, GPTQModel): import only.

Nothing is imported here; import the module you need.
"""

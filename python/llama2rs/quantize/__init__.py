"""Quantizers and the quantized matrix types.

* :mod:`.affine`: :class:`~.affine.AffineQuantized`, 4/8-bit groups with scales and zero points
  (what GPTQ checkpoints hold and llama2rs files store).
* :mod:`.q80`: llama2.c's Q8_0 (:class:`~.q80.Q8Tensor`, :func:`~.q80.quantize_q80`).
* :mod:`.gptq`: GPTQ and round-to-nearest for one matrix.
* :mod:`.calibrate`: a whole model, GPTQ driven by the NumPy reference forward pass.

Nothing is imported here, so that ``llama2rs.weights`` can use the matrix types without
loading the quantizers.
"""

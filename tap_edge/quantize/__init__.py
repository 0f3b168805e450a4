"""Step 5, fake-quantize and score: BatchNorm folding, per-channel weight quantization (round-to-nearest, GPTQ or
AdaRound: ``rounding.py``, run layer after layer by ``sequential.py``), activation calibration (PTQ), and the
metrics that compare a quantized model with its float self."""

from tap_edge.core.lazy import lazy_exports

__all__ = ["PTQConfig", "quantize_model", "compare_logits"]
__getattr__, __dir__ = lazy_exports(__name__, {"PTQConfig": "tap_edge.quantize.ptq",
                                               "quantize_model": "tap_edge.quantize.ptq",
                                               "compare_logits": "tap_edge.quantize.evaluate"})

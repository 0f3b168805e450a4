"""A rough latency model for ranking plans under a latency budget (``plan --latency-ms``): cycles per
multiply-accumulate of CMSIS-NN-class kernels by weight and activation width. Not a prediction of measured
latency: ``tap-edge measure`` measures."""

from __future__ import annotations


def cycles_per_mac(w: int, a: int) -> float:
    """Rough cycles per multiply-accumulate of CMSIS-NN-class kernels on a DSP-extended Cortex-M core.

    int8 x int8: dual-MAC SIMD (SMLAD) ~0.5 cycle/MAC with loads; 16x8 kernels ~1.0; weights below 8 bits are
    unpacked to int8 first (+25 %); float16/32 weights or float activations ~2.0 (FPU FMA plus loads). The
    model is for ranking plans under a latency budget, not a prediction of measured latency.
    """
    if w > 8 or a > 16:
        return 2.0
    base = 0.5 if a <= 8 else 1.0
    return base * (1.25 if w < 8 else 1.0)


#: Cycles per output element (or MAC, if it has any) of an op without a plan entry (add, pool, ...).
ELEMENTWISE_CYCLES = 1.0

import numpy as np


def proxy(layer, bits):
    """HAWQ-style: curvature (mean squared gradient, a Fisher approximation of the Hessian trace) times the
    expected squared weight perturbation of uniform quantization at each width."""
    w = np.asarray(layer["weight"], dtype=float)
    g = np.asarray(layer.get("grad", w), dtype=float)
    curvature = float(np.mean(g ** 2)) + 1e-12
    amax = float(np.max(np.abs(w))) + 1e-12
    costs = []
    for b in bits:
        step = 2.0 * amax / (2 ** b - 1)
        costs.append(curvature * w.size * step ** 2 / 12.0)
    return costs

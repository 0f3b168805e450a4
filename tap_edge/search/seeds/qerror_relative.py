import numpy as np


def proxy(layer, bits):
    """Relative weight quantization noise (step^2 / 12 over the mean squared weight) times the number of
    weights: layers with outlier-heavy weights lose more at low widths."""
    w = np.asarray(layer["weight"], dtype=float)
    amax = float(np.max(np.abs(w))) + 1e-12
    power = float(np.mean(w ** 2)) + 1e-12
    costs = []
    for b in bits:
        step = 2.0 * amax / (2 ** b - 1)
        costs.append(w.size * step ** 2 / 12.0 / power)
    return costs

"""TAP proxy program - HAND-WRITTEN SEED, not discovered by search.

This is the starting program of the `tap` proxy until `tap-edge evolve` ships a discovered one (replace this file
with the best program it saves). Contract: `proxy(layer, bits)` gets one layer's statistics (the dict described
by tap_edge.plan.stats.LAYERSTATS_API) and the candidate weight widths, and returns one non-negative cost per width
(larger = more damage; the allocator minimises the sum over layers).

Idea: a second-order Taylor estimate of the loss increase when this layer alone is quantized,
    0.5 * N * sum(fisher * dW^2) + |sum(grad * dW)|,
with the empirical Fisher diagonal as the curvature, plus a tenth of the layer's mean curvature times the squared
perturbation (HAWQ's form: weights whose own gradients vanish on the calibration batch are not free), and a
mild boost for the first and the last layer, whose errors reach the whole network or the output directly.
"""

import numpy as np


def proxy(layer, bits):
    n = max(1, int(layer["n_samples"]))
    mean_curv = float(np.mean(layer["fisher"])) * n  # average per-weight curvature (Fisher trace / n_weights)
    edge = 1.5 if layer["index"] == 0 or layer["index"] == layer["num_layers"] - 1 else 1.0
    known = list(layer["bits"])
    costs = []
    for b in bits:
        if b in known:
            j = known.index(b)
            qerr = float(layer["qerr"][j])
            second = 0.5 * n * float(layer["qerr_fisher"][j])
            first = abs(float(layer["qerr_grad"][j]))
        else:  # a width without statistics: scale the nearest one by 4x per bit (uniform-noise model)
            j = int(np.argmin([abs(k - b) for k in known]))
            f = 4.0 ** (known[j] - b)
            qerr = float(layer["qerr"][j]) * f
            second = 0.5 * n * float(layer["qerr_fisher"][j]) * f
            first = abs(float(layer["qerr_grad"][j])) * f ** 0.5
        floor = 0.1 * mean_curv * qerr  # HAWQ-like: mean curvature x squared perturbation
        costs.append(edge * (second + first + floor))
    # fewer bits never cost less: make the costs non-increasing in the width (the first-order term is noisy)
    order = sorted(range(len(bits)), key=lambda i: bits[i], reverse=True)
    for k in range(1, len(order)):
        costs[order[k]] = max(costs[order[k]], costs[order[k - 1]])
    return costs

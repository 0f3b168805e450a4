# TAP proxy discovered by `tap-edge evolve` (run rw3, candidate g1c8).
# LLM: smollm2 at http://127.0.0.1:59115/v1, temperature 0.7, grammar reweight, repair on.
# Search: population 10, generations 5, tasks digits-cnn@3, digits-resnet8@3, alpha 0.1, seeds on.
# Fitness 1.0587 (template crossover); per generation best: 1.0524, 1.0587, 1.0587, 1.0587, 1.0587.
# Reasoning: built-in NumPy array slicing function to convert a layer's weights into matrix multiplicative
# Lineage: g1c8 (crossover) = LLM edit of g0c0: layer_weight = (1.0 - layer["position"]) * layer["out_zero_frac"] +
#   layer["in_zero_frac"] ; width_power = 1.38
# Lineage: g0c0 = built-in seed 'tap_seed', fitness 1.0524; its module docstring (about that program) is dropped
#   here.
"""TAP proxy program - DISCOVERED BY SEARCH (tap-edge evolve run rw3, candidate g1c8), the `tap` proxy.

Provenance: the comment lines above (written by `tap-edge evolve`) and search_smollm2_reweight_pop10_gen5.md
beside this file (settings, fitness per generation, template probabilities, lineage). The code below this
docstring is the run's best program unchanged.

What it computes (a note by the maintainers; the LLM's own reasoning line above is not meaningful): the seed's
cost per width (tap_seed.py: a second-order Taylor estimate of the loss increase, 0.5 N sum(fisher dW^2) +
|sum(grad dW)| + 0.1 x mean curvature x ||dW||^2, boosted 1.5x on the first and last layer, made
non-increasing in the width), reshaped by SmolLM2-135M's edit as  w * cost ** 1.38  with
w = clip((1 - position) * out_zero_frac + in_zero_frac, 0.2, 5): layers fed with sparse (post-ReLU) inputs,
and early layers with sparse outputs, weigh more; the power 1.38 widens the gaps between widths and layers.
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
    parent_costs = [max(0.0, float(c)) for c in costs]
    layer_weight = (1.0 - layer['position']) * layer['out_zero_frac'] + layer['in_zero_frac']
    width_power = 1.38
    layer_weight = min(5.0, max(0.2, float(layer_weight)))
    width_power = min(1.5, max(0.5, float(width_power)))
    return [layer_weight * c ** width_power for c in parent_costs]

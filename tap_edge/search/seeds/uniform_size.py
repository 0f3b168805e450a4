import numpy as np


def proxy(layer, bits):
    """Every layer equally sensitive: the cost of a width is the noise power of that width, 4 ** -b, so the
    allocator spreads bits evenly (a uniform-precision baseline)."""
    w = np.asarray(layer["weight"])
    return [float(w.size) * 4.0 ** (-b) for b in bits]

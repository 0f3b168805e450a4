"""Simple seed proxy programs for the first population (``tap-edge evolve --seed-builtins``).

Each file is a sandbox program (``def proxy(layer, bits)``) that mirrors a classic hand-written proxy using
only the layer's weights (and its label-free gradient when present), so it runs on any LayerStats version.
"""

"""Sensitivity proxies: LayerStats -> cost per candidate bit-width (registry: list_proxies())."""

"""Leaves shared by every step: errors, units, the registry, the console, JSON helpers, paths and flags.

Import rule (kept by ``tests/test_layout.py``): a module in ``tap_edge.core`` imports nothing of tap_edge
except other ``tap_edge.core`` modules.
"""

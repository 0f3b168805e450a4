"""Plan keys of an ONNX file's layers: the PyTorch module names the exporter left in the file.

A plan is keyed by module names (``layer1.0.conv1``), so a plan of a network given as an ``.onnx`` file must
use the names the same network has in PyTorch. The ONNX front-end takes them from weight names
(``layer1.0.conv1.weight``: the dynamo exporter and unfolded TorchScript exports keep them);
:func:`with_module_keys` fills in the others from the TorchScript exporter's node scopes
(``/layer1/layer1.0/conv1/Conv``: the weight is an anonymous ``onnx::Conv_93`` once BatchNorm is folded into
it) and, for files from elsewhere, from the node name. No torch here: ``check model.onnx`` goes through it.
"""

from __future__ import annotations

import re

from tap_edge.graph.graph import ModelGraph

_SEGMENT = re.compile(r"[A-Za-z0-9_]+")


def scope_key(node_name: str) -> str | None:
    """The module a TorchScript-exported node came from: ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``.

    The exporter writes one scope per module of the call stack; a child of a container is written with its
    parent's prefix (``layer1`` then ``layer1.0``), so a scope that extends the previous one replaces it."""
    if not node_name.startswith("/"):
        return None
    parts = [p for p in node_name.split("/")[1:-1] if p]
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    key = ".".join(path)
    return key if path and valid_key(key) else None


def valid_key(key: str) -> bool:
    """A dotted module path PyTorch can name a submodule by (``a.0.conv``)."""
    return all(_SEGMENT.fullmatch(s) for s in key.split("."))


def sanitized(name: str) -> str:
    """``node name`` as one module-name segment (``/Conv_3`` -> ``Conv_3``)."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "layer"


def with_module_keys(graph: ModelGraph) -> ModelGraph:
    """Give every weighted op of an ONNX graph a module name (its plan key): the front-end's (from the weight
    name), else the exporter's scope, else the node name made a valid module name; a key two layers would
    share is made unique. Returns ``graph`` (changed in place)."""
    used: dict[str, str] = {}  # key -> the weight-owning op that holds it
    owner_key: dict[str, str] = {}
    for op in graph.quantizable_ops():
        owner = op.attrs.get("shared_weight") or op.name
        if owner in owner_key:  # the same weight tensor: the same layer
            op.module = owner_key[owner]
            continue
        key = op.module if op.module and valid_key(op.module) else (scope_key(op.name) or sanitized(op.name))
        base, n = key, 1
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used[key] = owner_key[owner] = op.module = key
    return graph

"""ONNX input shapes and shape inference at those shapes (the ONNX front-end's entry, before it walks the ops).

:func:`concrete_model` resolves the graph inputs (:func:`tap_edge.graph.shapes.resolve_inputs`: the user's
``--input-shape``, a batch dim assumed 1 and said, any other open dim refused), writes the concrete dims into
the model and runs ``onnx.shape_inference`` with data propagation. Where that leaves a tensor's size open
(a Reshape whose target is computed from ``Shape``, a Range, a ConstantOfShape, a Pad of computed pads), the
shape arithmetic is evaluated with ONNX's reference evaluator on small constants and inference runs again, so
every tensor a shape determines gets its real size. No onnxruntime is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tap_edge.core.errors import ModelLoadError
from tap_edge.documents import InputInfo
from tap_edge.graph.shapes import DeclaredInput, Dim, InputShapes, resolve_inputs

#: Constants larger than this (elements) are never evaluated: shape arithmetic works on small tensors.
_SMALL = 1 << 16
_ROUNDS = 8
_CONTROL_FLOW = ("If", "Loop", "Scan")


def _dtype(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return "float32"


def _declared_dim(d: Any) -> Dim:
    if d.HasField("dim_value"):
        return int(d.dim_value) if d.dim_value > 0 else "?"
    return d.dim_param or "?"


def declared_inputs(model: onnx.ModelProto) -> list[DeclaredInput]:
    """The graph inputs that are not initializers, with their declared dims (symbols kept)."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        dims = [_declared_dim(d) for d in tt.shape.dim] if tt.HasField("shape") else ["?"]
        out.append(DeclaredInput(vi.name, dims, _dtype(tt.elem_type)))
    return out


def _concrete(vi: onnx.ValueInfoProto) -> bool:
    tt = vi.type.tensor_type
    return vi.type.HasField("tensor_type") and tt.HasField("shape") and all(
        d.HasField("dim_value") and d.dim_value > 0 for d in tt.shape.dim)


def _fix_inputs(model: onnx.ModelProto, infos: list[InputInfo]) -> bool:
    """Write the concrete input dims into the model; True when any dim changed (stale value_info is dropped)."""
    shapes = {i.name: i.shape for i in infos}
    changed = False
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        tt = vi.type.tensor_type
        old = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if old != shapes[vi.name] or not tt.HasField("shape"):
            changed = True
            tt.ClearField("shape")
            tt.shape.SetInParent()  # a rank-0 input keeps an (empty) shape
            for v in shapes[vi.name]:
                tt.shape.dim.add().dim_value = v
    if changed:
        del model.graph.value_info[:]
        for vi in model.graph.output:  # open output dims are inferred again from the new inputs
            for d in vi.type.tensor_type.shape.dim:
                if not (d.HasField("dim_value") and d.dim_value > 0):
                    d.Clear()
    return changed


def _infer(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """``onnx.shape_inference`` with data propagation (plain inference when propagation itself fails)."""
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # data propagation fails on some exporters' graphs where plain inference works
        try:
            return onnx.shape_inference.infer_shapes(model)
        except Exception as e:
            raise ModelLoadError(f"{path}: ONNX shape inference failed ({e.__class__.__name__}: {str(e)[:120]})",
                                 "run onnx.checker.check_model on it and re-export") from None


def unresolved(model: onnx.ModelProto) -> list[str]:
    """Tensors of the main graph (node outputs) whose shape inference left a size open."""
    known = {vi.name for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input] if _concrete(vi)}
    known |= {i.name for i in model.graph.initializer}
    return [o for n in model.graph.node for o in n.output if o and o not in known]


def _shape_table(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output] if _concrete(vi)}


def evaluate_node(node: onnx.NodeProto, values: dict[str, np.ndarray], model: onnx.ModelProto) -> list[Any] | None:
    """The outputs of one node on constant inputs (ONNX's reference evaluator), None when it cannot run."""
    from onnx.reference import ReferenceEvaluator

    ins = list(dict.fromkeys(x for x in node.input if x))
    graph = helper.make_graph([node], "fold", [helper.make_tensor_value_info(x, 0, None) for x in ins],
                              [helper.make_tensor_value_info(o, 0, None) for o in node.output if o])
    try:
        tiny = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        return list(ReferenceEvaluator(tiny).run(None, {x: values[x] for x in ins}))
    except Exception:  # an op the reference evaluator lacks (contrib domains) or cannot run here
        return None


def _fold_round(model: onnx.ModelProto, inferred: onnx.ModelProto, folded: dict[str, np.ndarray]) -> int:
    """Evaluate every node whose inputs are small known constants (or ``Shape`` / ``Size`` of a tensor of
    known size) into ``folded``; returns how many values were added."""
    shapes = _shape_table(inferred)
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if np.prod(i.dims) <= _SMALL}
    values.update(folded)
    added = 0
    for node in model.graph.node:
        outs = [o for o in node.output if o]
        if node.op_type in _CONTROL_FLOW or not outs or all(o in values for o in outs):
            continue
        if node.op_type in ("Shape", "Size") and node.input[0] in shapes:
            shape = np.array(shapes[node.input[0]], dtype=np.int64)
            if node.op_type == "Size":
                result = [np.array(shape.prod(), dtype=np.int64)]
            else:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                result = [shape[attrs.get("start", 0):attrs.get("end", None)]]
        elif all(x in values for x in node.input if x) and (node.input or node.op_type == "Constant"):
            result = evaluate_node(node, values, model)
            if result is None:
                continue
        else:
            continue
        for name, value in zip(outs, result, strict=False):
            array = np.asarray(value)
            if array.size <= _SMALL and array.dtype != object:
                values[name] = folded[name] = array
                added += 1
    return added


def _without_large_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for inference only: large initializers become typed graph inputs (their values never matter
    to shapes), so the repeated inference does not copy the weights."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    keep = [i for i in work.graph.initializer if np.prod(i.dims) <= _SMALL]
    large = [i for i in work.graph.initializer if np.prod(i.dims) > _SMALL]
    work.graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in large)
    del work.graph.initializer[:]
    work.graph.initializer.extend(keep)
    return work


def _fold_shapes(model: onnx.ModelProto, inferred: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Resolve what plain inference left open by evaluating shape arithmetic (see the module docstring); the
    result is ``inferred`` (every node kept) with the newly known sizes in its value_info."""
    base = _without_large_constants(model)
    folded: dict[str, np.ndarray] = {}
    current = inferred
    for _ in range(_ROUNDS):
        if not _fold_round(base, current, folded):
            break
        work = onnx.ModelProto()
        work.CopyFrom(base)
        nodes = [n for n in work.graph.node if not any(o in folded for o in n.output if o)]
        del work.graph.node[:]
        work.graph.node.extend(nodes)
        del work.graph.value_info[:]
        work.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in folded.items())
        current = _infer(work, path)
        if not unresolved(current):
            break
    known = {vi.name: vi for vi in [*current.graph.value_info, *current.graph.output] if _concrete(vi)}
    for name, value in folded.items():
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        known[name] = helper.make_tensor_value_info(name, elem, list(value.shape))
    open_names = [n for n in unresolved(inferred) if n in known]
    for vi in inferred.graph.output:  # a graph output's size lives in its own entry
        if vi.name in open_names:
            vi.type.CopyFrom(known[vi.name].type)
    outputs = {vi.name for vi in inferred.graph.output}
    kept = [vi for vi in inferred.graph.value_info if vi.name not in open_names]
    del inferred.graph.value_info[:]
    inferred.graph.value_info.extend(kept + [known[n] for n in open_names if n not in outputs])
    return inferred


def concrete_model(model: onnx.ModelProto, input_shapes: InputShapes | None,
                   path: Path) -> tuple[onnx.ModelProto, list[InputInfo], list[str]]:
    """The model with every inferable tensor size filled in at the resolved input shapes, the inputs as
    planned (for the documents), and the tensors whose size stayed open (planned at 1 per open dim)."""
    infos = resolve_inputs(declared_inputs(model), input_shapes, where=f"{path.name}: ", resizable=False)
    _fix_inputs(model, infos)
    inferred = _infer(model, path)
    if unresolved(inferred):
        inferred = _fold_shapes(model, inferred, path)
    return inferred, infos, unresolved(inferred)

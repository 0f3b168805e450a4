"""TFLite front-end: a ``.tflite`` flatbuffer to a :class:`~tap_edge.graph.graph.ModelGraph`.

The LiteRT interpreter (``ai_edge_litert``) opens and verifies the file and lists the ops of the main subgraph
in execution order with their tensors; the flatbuffer itself (read with the schema classes shipped in
``ai_edge_litert``) adds what the interpreter does not expose: which tensors hold constant data, the stored
tensor type (INT4 shows as int8 in the interpreter) and the builtin options (strides, fused activations).
``allocate_tensors`` is called only to resize inputs (:mod:`.tflite_shapes`). When the interpreter cannot
register an op (a model newer than the installed runtime) the graph is read from the flatbuffer alone, so an
op the runtime does not know is listed as ``unknown`` rather than failing the load.

Activation tensors (graph inputs, op outputs, variables) keep their TFLite NHWC shapes; constants are
attached to the op that consumes them, weights in PyTorch layout (conv ``[out, in/groups, kh, kw]``, fc
``[out, in]``). A constant buffer several ops read (shared weights) is counted once; a sparse constant
(DENSIFY) at its stored size. TFLite graphs are already what the runtime executes (BatchNorm folded,
activations fused), so :func:`~tap_edge.graph.graph.normalize` is not applied; an activation fused into an op
shows in ``Op.fused``.

Subgraphs that control-flow ops run (IF branches, WHILE cond/body, CALL_ONCE init) are read from the
flatbuffer and flattened into the op list right after their caller, as TFLite Micro plans them
(:class:`~tap_edge.graph.graph.Subgraph`); their tensor names get the subgraph's name as a prefix.
``graph.meta["tflite"]`` keeps what the memory model needs from the file: its size and the bytes of its
constant buffers, the tensor and op counts of every subgraph and the resource variables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tap_edge.core.errors import ModelLoadError
from tap_edge.graph.frontends.tflite_shapes import resize_inputs, stored_inputs
from tap_edge.graph.graph import ModelGraph, Op, Subgraph, Tensor
from tap_edge.graph.shapes import InputShapes
from tap_edge.graph.tflite_ops import builtin_class

# ---- op classes: tap_edge.graph.tflite_ops --------------------------------------------------------------
#: ``fused_activation_function`` of builtin options (0 = NONE).
_FUSED_ACT = {1: "relu", 2: "hardtanh", 3: "relu6", 4: "tanh", 5: "sign_bit"}
_NP_DTYPES = {
    "float32": "float32", "float16": "float16", "float64": "float64", "int8": "int8", "uint8": "uint8",
    "int16": "int16", "uint16": "uint16", "int32": "int32", "uint32": "uint32", "int64": "int64",
    "uint64": "uint64", "bool": "bool", "object": "resource", "bytes": "string", "str": "string",
    "complex64": "complex64", "complex128": "complex128",
}
_MAGIC = b"TFL3"


# ---- neutral description, filled from the interpreter or the flatbuffer ---------------------------------
@dataclass
class _RawTensor:
    name: str
    shape: list[int]
    dtype: str
    const: bool  # holds data in the file (weights, biases, shape vectors)
    scales: int = 0  # number of quantization scales (> 1: per-channel)
    buffer: int = 0  # the flatbuffer buffer holding its data (several tensors may share one)
    stored_bytes: int = 0  # bytes of that buffer (a sparse tensor stores fewer values than its shape)
    sparse: bool = False


@dataclass
class _RawOp:
    op_type: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    custom: bool = False  # a CUSTOM op: ``op_type`` is its custom code


@dataclass
class _RawSubgraph:
    """A subgraph other than the main one (read from the flatbuffer)."""

    name: str
    tensors: dict[int, _RawTensor]
    ops: list[_RawOp]
    inputs: list[int]
    outputs: list[int]


@dataclass
class _Raw:
    tensors: dict[int, _RawTensor]
    ops: list[_RawOp]
    inputs: list[int]
    outputs: list[int]
    subgraphs: int = 1
    reader: str = "interpreter"
    const_value: Any = None  # callable(index) -> list[int] | None for small integer constants
    extra: dict[int, _RawSubgraph] = field(default_factory=dict)  # subgraphs 1.. by index
    file: dict[str, Any] = field(default_factory=dict)  # sizes and counts of the file (graph.meta["tflite"])


def _fail(path: Path, problem: str, hint: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: {problem}", hint)


def _read(path: Path) -> bytes:
    """The file's bytes, or a ModelLoadError for a missing, unreadable or empty file."""
    if not path.exists():
        raise _fail(path, "file not found", "check the path of the .tflite model")
    if path.is_dir():
        raise _fail(path, "is a directory, not a .tflite file", "pass the path of the .tflite model file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror or e})", "check the file's permissions") from None
    if not data:
        raise _fail(path, "file is empty (0 bytes)", "re-export or re-download the model; the copy is empty")
    return data


def _diagnose(path: Path, data: bytes, detail: str) -> ModelLoadError:
    """Why a file the interpreter refused is not a usable TFLite model."""
    head = data[:64]
    if head.startswith(b"version https://git-lfs"):
        return _fail(path, "is a Git LFS pointer, not the model", "run 'git lfs pull' to fetch the real file")
    if head.startswith(b"PK\x03\x04"):
        return _fail(path, "is a zip archive, not a TFLite flatbuffer",
                     "extract the .tflite inside it (e.g. from a MediaPipe .task bundle) and pass that")
    if len(data) < 8 or data[4:8] != _MAGIC:
        return _fail(path, f"is not a TFLite flatbuffer (no '{_MAGIC.decode()}' identifier)",
                     "pass a .tflite file written by the TFLite / LiteRT converter")
    return _fail(path, f"is truncated or corrupt ({len(data)} bytes; {detail})",
                 "re-export or re-download the model; the file fails flatbuffer verification")


# ---- flatbuffer reading ----------------------------------------------------------------------------------
def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _enum_names(cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _options(schema: Any, fb_op: Any, opt_names: dict[int, str]) -> dict[str, Any]:
    """The builtin options that matter here (strides, padding, kernel, fused activation, ...)."""
    kind = fb_op.BuiltinOptionsType()
    table = fb_op.BuiltinOptions()
    cls = getattr(schema, opt_names.get(kind, ""), None) if kind else None
    if table is None or cls is None:
        return {}
    opt = cls()
    opt.Init(table.Bytes, table.Pos)
    out: dict[str, Any] = {}
    for key, meth in (("stride_h", "StrideH"), ("stride_w", "StrideW"), ("dilation_h", "DilationHFactor"),
                      ("dilation_w", "DilationWFactor"), ("filter_h", "FilterHeight"),
                      ("filter_w", "FilterWidth"), ("depth_multiplier", "DepthMultiplier"),
                      ("keep_dims", "KeepDims"), ("adj_x", "AdjX"), ("adj_y", "AdjY")):
        if hasattr(opt, meth):
            out[key] = getattr(opt, meth)()
    for key, meth in (("then_subgraph", "ThenSubgraphIndex"), ("else_subgraph", "ElseSubgraphIndex"),
                      ("cond_subgraph", "CondSubgraphIndex"), ("body_subgraph", "BodySubgraphIndex"),
                      ("init_subgraph", "InitSubgraphIndex")):
        if hasattr(opt, meth):
            out[key] = int(getattr(opt, meth)())
    if hasattr(opt, "SharedName"):
        out["shared_name"] = (opt.SharedName() or b"").decode("utf-8", "replace")
    if hasattr(opt, "Padding"):
        out["padding"] = "same" if opt.Padding() == 0 else "valid"
    if hasattr(opt, "FusedActivationFunction"):
        fused = _FUSED_ACT.get(opt.FusedActivationFunction())
        if fused:
            out["fused_activation"] = fused
    return out


def _from_flatbuffer(data: bytes) -> _Raw:
    """Read every subgraph straight from the flatbuffer (raises on a malformed file)."""
    import numpy as np

    schema = _schema()
    model = schema.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() < 1:
        raise ValueError("model has no subgraph")
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    opt_names = _enum_names(schema.BuiltinOptions)

    def buffer_bytes(b: int) -> int:
        if not 0 < b < model.BuffersLength():
            return 0
        buf = model.Buffers(b)
        return int(buf.DataLength() or buf.Size())

    def read_subgraph(sg: Any) -> tuple[dict[int, _RawTensor], list[_RawOp], list[int], list[int]]:
        tensors: dict[int, _RawTensor] = {}
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            b = t.Buffer()
            buf = model.Buffers(b) if 0 < b < model.BuffersLength() else None
            has_data = buf is not None and (buf.DataLength() > 0 or buf.Offset() > 1)
            q = t.Quantization()
            tensors[i] = _RawTensor(
                name=(t.Name() or b"").decode("utf-8", "replace"),
                shape=[int(t.Shape(j)) for j in range(t.ShapeLength())],
                dtype=type_names.get(t.Type(), f"type{t.Type()}").lower(),
                const=has_data and not t.IsVariable(),
                scales=q.ScaleLength() if q is not None else 0,
                buffer=b if has_data else 0, stored_bytes=buffer_bytes(b) if has_data else 0,
                sparse=t.Sparsity() is not None,
            )
        ops: list[_RawOp] = []
        for k in range(sg.OperatorsLength()):
            fb_op = sg.Operators(k)
            code = model.OperatorCodes(fb_op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = op_names.get(builtin, f"BUILTIN_{builtin}")
            custom = name == "CUSTOM"
            if custom:
                name = (code.CustomCode() or b"CUSTOM").decode("utf-8", "replace")
            ops.append(_RawOp(name, [int(x) for x in (fb_op.InputsAsNumpy() if fb_op.InputsLength() else [])],
                              [int(x) for x in (fb_op.OutputsAsNumpy() if fb_op.OutputsLength() else [])],
                              _options(schema, fb_op, opt_names), custom))
        ins = [int(x) for x in sg.InputsAsNumpy()] if sg.InputsLength() else []
        outs = [int(x) for x in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
        return tensors, ops, ins, outs

    main = model.Subgraphs(0)

    def const_value(idx: int) -> list[int] | None:
        if not 0 <= idx < main.TensorsLength():
            return None
        t = main.Tensors(idx)
        b = t.Buffer()
        buf = model.Buffers(b) if 0 < b < model.BuffersLength() else None
        if buf is None or buf.DataLength() == 0 or t.Type() not in (schema.TensorType.INT32,
                                                                    schema.TensorType.INT64):
            return None
        dt = "<i4" if t.Type() == schema.TensorType.INT32 else "<i8"
        return [int(v) for v in np.frombuffer(buf.DataAsNumpy().tobytes(), dtype=dt)]

    tensors, ops, ins, outs = read_subgraph(main)
    extra: dict[int, _RawSubgraph] = {}
    n_tensors, n_ops = main.TensorsLength(), main.OperatorsLength()
    for k in range(1, model.SubgraphsLength()):
        sg = model.Subgraphs(k)
        name = (sg.Name() or b"").decode("utf-8", "replace") or f"subgraph{k}"
        extra[k] = _RawSubgraph(name, *read_subgraph(sg))
        n_tensors += sg.TensorsLength()
        n_ops += sg.OperatorsLength()
    buffers = {t.buffer: t.stored_bytes for sub in [tensors, *(e.tensors for e in extra.values())]
               for t in sub.values() if t.buffer}
    file = {"file_bytes": len(data), "buffer_bytes": sum(buffers.values()), "tensors": n_tensors, "ops": n_ops,
            "subgraphs": model.SubgraphsLength()}
    return _Raw(tensors, ops, ins, outs, model.SubgraphsLength(), "flatbuffer", const_value, extra, file)


# ---- interpreter reading ---------------------------------------------------------------------------------
def _interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    return Interpreter(model_path=str(path),
                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def _np_dtype(dt: Any) -> str:
    import numpy as np

    name = np.dtype(dt).name
    return _NP_DTYPES.get(name, name)


def _from_interpreter(interp: Any, fb: _Raw | None) -> _Raw:
    """The interpreter's view of the main subgraph, completed with the flatbuffer's details when read."""
    tensors: dict[int, _RawTensor] = {}
    for d in interp.get_tensor_details():
        i = int(d["index"])
        fbt = fb.tensors.get(i) if fb else None
        # The stored type wins: INT4 / INT2 weights show as int8 in the interpreter.
        dtype = fbt.dtype if fbt is not None else _np_dtype(d["dtype"])
        if fbt is not None:
            const = fbt.const
        else:
            try:
                interp.get_tensor(i)  # constants have data before allocate_tensors(); activations do not
                const = True
            except (ValueError, RuntimeError, TypeError):
                const = False
        scales = len(d.get("quantization_parameters", {}).get("scales", []))
        tensors[i] = _RawTensor(str(d["name"]), [int(x) for x in d["shape"]], dtype, const, scales,
                                fbt.buffer if fbt else 0, fbt.stored_bytes if fbt else 0, bool(fbt and fbt.sparse))
    if fb:  # tensors the interpreter could not describe (no name, unusual type)
        for i, t in fb.tensors.items():
            tensors.setdefault(i, t)
    details = interp._get_ops_details()
    same_ops = fb is not None and len(fb.ops) == len(details)
    ops = []
    for k, d in enumerate(details):
        fb_op = fb.ops[k] if same_ops and fb else None
        ops.append(_RawOp(fb_op.op_type if fb_op else str(d["op_name"]), [int(x) for x in d["inputs"]],
                          [int(x) for x in d["outputs"]], fb_op.options if fb_op else {},
                          fb_op.custom if fb_op else False))

    def const_value(idx: int) -> list[int] | None:
        if fb is not None and fb.const_value is not None:
            return fb.const_value(idx)
        try:
            return [int(v) for v in interp.get_tensor(idx).reshape(-1)]
        except (ValueError, RuntimeError, TypeError):
            return None

    return _Raw(tensors, ops, [int(d["index"]) for d in interp.get_input_details()],
                [int(d["index"]) for d in interp.get_output_details()],
                fb.subgraphs if fb else int(interp.num_subgraphs()), "interpreter", const_value,
                fb.extra if fb else {}, fb.file if fb else {})


# ---- building the graph ----------------------------------------------------------------------------------
def _numel(shape: list[int]) -> int:
    return math.prod(max(d, 1) for d in shape) if shape else 1


def _op_class(raw_op: _RawOp, tensors: dict[int, _RawTensor], const_value: Any) -> tuple[str, dict[str, Any]]:
    t = raw_op.op_type
    if raw_op.custom:
        return "custom", {}
    if t == "MEAN":
        data = tensors.get(raw_op.inputs[0]) if raw_op.inputs else None
        rank = len(data.shape) if data else 0
        axes = const_value(raw_op.inputs[1]) if len(raw_op.inputs) > 1 and const_value else None
        if rank == 4 and axes is not None and sorted(a % 4 for a in axes) == [1, 2]:
            return "global_pool", {"axes": [1, 2]}
        return "reduce", ({"axes": axes} if axes is not None else {})
    return builtin_class(t)


def _unique(name: str, taken: set[str], fallback: str) -> str:
    out = name or fallback
    if out in taken:
        out = f"{name}#{fallback}" if name else fallback
    n = 1
    while out in taken:
        n += 1
        out = f"{fallback}_{n}"
    taken.add(out)
    return out


_DTYPE_BYTES = {"float32": 4, "int32": 4, "uint32": 4, "float16": 2, "int16": 2, "uint16": 2, "int8": 1,
                "uint8": 1, "bool": 1, "int64": 8, "uint64": 8, "float64": 8, "complex64": 8, "int4": 0.5}
#: Option fields naming the subgraphs a control-flow op runs, in the order TFLite Micro plans them.
_CALLS = ("then_subgraph", "else_subgraph", "cond_subgraph", "body_subgraph", "init_subgraph")


class _Builder:
    """Turns the raw subgraphs into one op list: the main subgraph with every called subgraph inlined after
    its caller (:class:`~tap_edge.graph.graph.Subgraph`)."""

    def __init__(self, raw: _Raw) -> None:
        self.raw = raw
        self.taken: set[str] = set()
        self.op_names: set[str] = set()
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []
        self.spans: list[Subgraph] = []
        self.claimed: set[int] = set()  # buffers already attached (a shared constant is counted once)
        self.weight_owner: dict[int, str] = {}
        self.variables: dict[str, int] = {}  # shared name -> bytes of the value assigned to it
        self.visited: set[int] = set()

    def subgraph(self, index: int, prefix: str = "") -> tuple[dict[int, str], list[str]]:
        """Convert one subgraph (0 = main); returns its activation tensor names by index and its op names."""
        raw = self.raw
        if index == 0:
            tensors, rops, ins, outs, const_value = raw.tensors, raw.ops, raw.inputs, raw.outputs, raw.const_value
        else:
            sub = raw.extra[index]
            tensors, rops, ins, outs, const_value = sub.tensors, sub.ops, sub.inputs, sub.outputs, None
        self.visited.add(index)
        produced = {o for op in rops for o in op.outputs if o >= 0}
        io = set(ins) | set(outs)

        def is_const(i: int) -> bool:
            t = tensors.get(i)
            return t is not None and t.const and i not in produced and i not in io

        act_ids: list[int] = []
        seen: set[int] = set()
        for i in [*ins, *(x for op in rops for x in [*op.inputs, *op.outputs]), *outs]:
            if i >= 0 and i not in seen and i in tensors and not is_const(i):
                seen.add(i)
                act_ids.append(i)
        names = {i: _unique(f"{prefix}{tensors[i].name}" if tensors[i].name else "", self.taken,
                            f"{prefix}t{i}") for i in act_ids}
        for i in act_ids:
            t = tensors[i]
            kind = ("input" if i in ins else "output" if i in outs else "activation") if index == 0 else "activation"
            self.tensors[names[i]] = Tensor(names[i], list(t.shape), t.dtype, kind)

        # DEQUANTIZE (and DENSIFY before it) of a constant: float16 / sparse storage of a later op's weights
        stored: dict[int, int] = {}
        for op in rops:
            if op.op_type in ("DENSIFY", "DEQUANTIZE") and op.inputs and op.outputs:
                src = op.inputs[0] if is_const(op.inputs[0]) else stored.get(op.inputs[0], -1)
                if src >= 0:
                    stored[op.outputs[0]] = src
        weight_store = {stored[r.inputs[1]] for r in rops
                        if builtin_class(r.op_type)[0] in ("conv", "dwconv", "fc") and len(r.inputs) > 1
                        and r.inputs[1] in stored}
        handles = {op.outputs[0]: op.options.get("shared_name", "") for op in rops
                   if op.op_type == "VAR_HANDLE" and op.outputs}
        op_list: list[str] = []
        for k, r in enumerate(rops):
            op = self._op(k, r, tensors, names, const_value, is_const, stored, weight_store, prefix)
            self.ops.append(op)
            op_list.append(op.name)
            if r.op_type == "VAR_HANDLE":
                op.attrs["shared_name"] = r.options.get("shared_name", "")
            if r.op_type == "ASSIGN_VARIABLE" and len(r.inputs) > 1 and r.inputs[1] in tensors:
                var = handles.get(r.inputs[0], f"{prefix}{r.inputs[0]}")
                value = tensors[r.inputs[1]]
                nbytes = math.ceil(_numel(value.shape) * _DTYPE_BYTES.get(value.dtype, 4))
                self.variables[var] = max(self.variables.get(var, 0), nbytes)
            calls = [r.options[c] for c in _CALLS if c in r.options and r.options[c] in raw.extra]
            if calls:
                op.attrs["calls"] = [raw.extra[c].name for c in calls]
            for c in calls:
                if c in self.visited:
                    continue  # a subgraph run by several ops is planned once
                sub = raw.extra[c]
                sub_names, sub_ops = self.subgraph(c, f"{sub.name}/")
                self.spans.append(Subgraph(sub.name, op.name, sub_ops,
                                           [sub_names[i] for i in sub.inputs if i in sub_names],
                                           [sub_names[i] for i in sub.outputs if i in sub_names]))
                op_list.extend(sub_ops)
        return names, op_list

    def _op(self, k: int, r: _RawOp, tensors: dict[int, _RawTensor], names: dict[int, str], const_value: Any,
            is_const: Any, stored: dict[int, int], weight_store: set[int], prefix: str) -> Op:
        op_class, attrs = _op_class(r, tensors, const_value)
        first_out = next((o for o in r.outputs if o in names), None)
        name = (names[first_out] if first_out is not None
                else _unique(f"{prefix}{k}:{r.op_type}", self.op_names | self.taken, f"{prefix}op{k}"))
        self.op_names.add(name)
        op = Op(name, r.op_type, op_class, [names[i] for i in r.inputs if i in names],
                [names[o] for o in r.outputs if o in names], module=None, attrs=attrs)
        opts = r.options
        if "fused_activation" in opts:
            op.fused.append(opts["fused_activation"])
        consts = [i for i in r.inputs if i >= 0 and is_const(i)]
        weight_id = r.inputs[1] if op_class in ("conv", "dwconv", "fc") and len(r.inputs) > 1 else -1
        if r.op_type == "TRANSPOSE_CONV":
            weight_id = r.inputs[1] if len(r.inputs) > 1 else -1
        bias_id = r.inputs[2] if op_class in ("conv", "dwconv", "fc") and len(r.inputs) > 2 else -1
        if r.op_type == "TRANSPOSE_CONV":
            bias_id = r.inputs[3] if len(r.inputs) > 3 else -1
        w_src = weight_id if is_const(weight_id) else stored.get(weight_id, -1)
        out_t = tensors.get(r.outputs[0]) if r.outputs and r.outputs[0] >= 0 else None
        data_in = r.inputs[2] if r.op_type == "TRANSPOSE_CONV" and len(r.inputs) > 2 else \
            (r.inputs[0] if r.inputs else -1)
        in_t = tensors.get(data_in) if data_in >= 0 else None
        out_shape = out_t.shape if out_t else []
        w_shape = tensors[weight_id].shape if weight_id in tensors else []
        # every operand's quantization scales (0: float / none): TFLM's Prepare makes a temporary tensor of each
        op.attrs["operand_scales"] = [tensors[i].scales for i in [*r.inputs, *r.outputs] if i >= 0 and i in tensors]
        if r.op_type in ("DEQUANTIZE", "DENSIFY") and r.inputs and r.inputs[0] in tensors:
            op.attrs["input_dtype"] = tensors[r.inputs[0]].dtype
        if op_class == "conv" and len(w_shape) == 4:
            oc, kh, kw, cin_g = w_shape
            cin = in_t.shape[-1] if in_t and in_t.shape else cin_g
            groups = max(1, cin // cin_g) if cin_g else 1
            spatial = _numel((in_t.shape if r.op_type == "TRANSPOSE_CONV" and in_t else out_shape)[1:-1]) \
                if len(out_shape) == 4 else 1
            op.macs = spatial * oc * cin_g * kh * kw
            op.attrs.update({"kernel": [kh, kw], "stride": [opts.get("stride_h", 1), opts.get("stride_w", 1)],
                             "groups": groups, "dilation": [opts.get("dilation_h", 1), opts.get("dilation_w", 1)]})
            if w_src >= 0:
                op.weight_shape = [oc, cin_g, kh, kw]
        elif op_class == "dwconv" and len(w_shape) == 4:
            _, kh, kw, cm = w_shape
            cin = in_t.shape[-1] if in_t and in_t.shape else cm
            spatial = _numel(out_shape[1:-1]) if len(out_shape) == 4 else 1
            op.macs = spatial * cm * kh * kw
            op.attrs.update({"kernel": [kh, kw], "stride": [opts.get("stride_h", 1), opts.get("stride_w", 1)],
                             "groups": cin, "depth_multiplier": max(1, cm // max(cin, 1)),
                             "dilation": [opts.get("dilation_h", 1), opts.get("dilation_w", 1)]})
            if w_src >= 0:
                op.weight_shape = [cm, 1, kh, kw]
        elif op_class == "fc" and len(w_shape) == 2:
            op.macs = _numel(out_shape) * w_shape[1]
            if w_src >= 0:
                op.weight_shape = list(w_shape)
        elif op_class == "matmul" and len(r.inputs) > 1 and in_t and in_t.shape:
            k_dim = in_t.shape[-2] if opts.get("adj_x") and len(in_t.shape) > 1 else in_t.shape[-1]
            op.macs = _numel(out_shape) * k_dim
            rhs = tensors.get(r.inputs[1])
            op.attrs.update({"adj_x": bool(opts.get("adj_x")), "adj_y": bool(opts.get("adj_y")),
                             "lhs_shape": list(in_t.shape), "rhs_shape": list(rhs.shape) if rhs else [],
                             "rhs_const": bool(rhs is not None and is_const(r.inputs[1]))})
        if op.weight_shape is not None:
            src = tensors[w_src]
            op.weight_dtype = src.dtype
            op.attrs["weight_quant"] = ("per_channel" if src.scales > 1 else
                                        "per_tensor" if src.scales == 1 else "none")
            if src.buffer in self.weight_owner:
                op.attrs["shared_weight"] = self.weight_owner[src.buffer]
            elif src.buffer:
                self.weight_owner[src.buffer] = name
                self.claimed.add(src.buffer)
            if src.sparse:
                op.attrs["weight_values"] = int(src.stored_bytes / _DTYPE_BYTES.get(src.dtype, 4))
        if "padding" in opts and op_class in ("conv", "dwconv", "pool"):
            op.attrs["padding"] = opts["padding"]
        if op_class == "pool" and "filter_h" in opts:
            op.attrs.update({"kernel": [opts["filter_h"], opts["filter_w"]],
                             "stride": [opts.get("stride_h", 1), opts.get("stride_w", 1)]})
        for i in consts:
            t = tensors[i]
            if i in weight_store and r.op_type in ("DEQUANTIZE", "DENSIFY"):
                op.attrs["weight_storage"] = True  # counted as the consuming op's weights
                continue
            if i == w_src or (t.buffer and t.buffer in self.claimed):
                continue
            if t.buffer:
                self.claimed.add(t.buffer)
            n = int(t.stored_bytes / _DTYPE_BYTES.get(t.dtype, 4)) if t.sparse else _numel(t.shape)
            if i == bias_id and op.weight_shape is not None:
                op.bias = n
            else:
                op.other_params += n
        return op


def _build(raw: _Raw, path: Path) -> ModelGraph:
    b = _Builder(raw)
    names, _ = b.subgraph(0)
    inputs = [names[i] for i in raw.inputs if i in names]
    outputs = [names[i] for i in raw.outputs if i in names]
    for name in outputs:
        b.tensors[name].kind = "output"
    for name in inputs:
        b.tensors[name].kind = "input"
    meta: dict[str, Any] = {"layout": "NHWC", "path": str(path), "subgraphs": raw.subgraphs,
                            "reader": raw.reader,
                            "tflite": {**raw.file, "variables": b.variables,
                                       "io_quantized": sum(1 for i in [*raw.inputs, *raw.outputs]
                                                           if raw.tensors.get(i) and raw.tensors[i].scales)}}
    return ModelGraph(path.stem, "tflite", b.ops, b.tensors, inputs, outputs, meta, b.spans)


def load_tflite_graph(path: str | Path, input_shapes: InputShapes | None = None) -> ModelGraph:
    """Read a ``.tflite`` file into a ModelGraph (``frontend="tflite"``) at ``input_shapes`` (inputs with -1
    dims are resized: :mod:`.tflite_shapes`); bad files raise ModelLoadError."""
    p = Path(path)
    data = _read(p)
    try:
        interp = _interpreter(p)  # verifies the flatbuffer before anything reads it
    except ImportError as e:
        raise _fail(p, f"cannot be read: ai_edge_litert is not importable ({e})",
                    "pip install ai-edge-litert") from None
    except (ValueError, RuntimeError, OSError, MemoryError) as e:
        detail = " ".join(str(e).split()) or e.__class__.__name__
        if "Registration failed" in detail:  # a verified file with an op this runtime lacks: read it alone
            try:
                graph = _build(_from_flatbuffer(data), p)
            except Exception:  # any parse failure is reported as the runtime's error
                raise _fail(p, f"cannot be loaded by the installed TFLite runtime ({detail})",
                            "upgrade ai-edge-litert, or re-export the model with an older op set") from None
            graph.meta["runtime_error"] = detail
            stored = {n: (graph.tensors[n].shape, graph.tensors[n].dtype) for n in graph.inputs}
            graph.meta["inputs"] = [i.model_dump() for i in stored_inputs(stored, p, input_shapes)]
            return graph
        raise _diagnose(p, data, detail) from None
    inputs = resize_inputs(interp, p, input_shapes)
    try:
        fb: _Raw | None = _from_flatbuffer(data)
    except Exception:  # a schema the classes cannot read: use the interpreter alone
        fb = None
    try:
        raw = _from_interpreter(interp, fb)
    except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as e:
        raise _fail(p, f"cannot be listed by the TFLite interpreter ({e})",
                    "re-export the model with a current TFLite / LiteRT converter") from None
    if fb is not None and len(fb.ops) != len(raw.ops):  # the interpreter skips ops it cannot wire up
        raise _fail(p, f"is corrupt: the file lists {len(fb.ops)} ops but only {len(raw.ops)} are valid",
                    "re-export or re-download the model")
    graph = _build(raw, p)
    graph.meta["inputs"] = [i.model_dump() for i in inputs]
    return graph

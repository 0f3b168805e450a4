"""TFLite builtin operators: the op class of each, and the builtins a PyTorch or ONNX op becomes once converted.

Runtimes that execute ``.tflite`` files (TFLite Micro, LiteRT) register kernels per builtin and check types
per builtin, so their support tables (``device_profiles/_runtimes.yaml``) are written per builtin;
:func:`tflite_builtins` says which builtins to look up for an op of any front-end.
"""

from __future__ import annotations

from typing import Any

#: Builtin -> op class. Activations map to ``act`` (see :data:`ACT_FNS`); builtins not listed are ``unknown``.
BUILTIN_CLASSES: dict[str, str] = {
    "CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dwconv", "FULLY_CONNECTED": "fc", "BATCH_MATMUL": "matmul",
    "TRANSPOSE_CONV": "conv",
    "ADD": "add", "SUB": "add", "ADD_N": "add", "MUL": "mul", "DIV": "mul",
    "CONCATENATION": "concat", "PACK": "concat",
    "AVERAGE_POOL_2D": "pool", "MAX_POOL_2D": "pool", "L2_POOL_2D": "pool",
    "SUM": "reduce", "REDUCE_MAX": "reduce", "REDUCE_MIN": "reduce", "REDUCE_PROD": "reduce",
    "REDUCE_ANY": "reduce", "REDUCE_ALL": "reduce", "ARG_MAX": "reduce", "ARG_MIN": "reduce", "CUMSUM": "reduce",
    "SOFTMAX": "softmax", "LOG_SOFTMAX": "softmax",
    "RESHAPE": "reshape", "SQUEEZE": "reshape", "EXPAND_DIMS": "reshape", "BROADCAST_TO": "reshape",
    "TRANSPOSE": "transpose", "DEPTH_TO_SPACE": "transpose", "SPACE_TO_DEPTH": "transpose",
    "BATCH_TO_SPACE_ND": "transpose", "SPACE_TO_BATCH_ND": "transpose",
    "PAD": "pad", "PADV2": "pad", "MIRROR_PAD": "pad",
    "RESIZE_BILINEAR": "resize", "RESIZE_NEAREST_NEIGHBOR": "resize",
    "STRIDED_SLICE": "slice", "SLICE": "slice", "SPLIT": "slice", "SPLIT_V": "slice", "GATHER": "slice",
    "GATHER_ND": "slice", "UNPACK": "slice", "REVERSE_V2": "slice",
    "QUANTIZE": "quantize", "DEQUANTIZE": "quantize", "EMBEDDING_LOOKUP": "embedding",
    "L2_NORMALIZATION": "norm",
    "MAXIMUM": "minmax", "MINIMUM": "minmax",
    "NEG": "math", "ABS": "math", "SQRT": "math", "RSQRT": "math", "SQUARE": "math", "LOG": "math",
    "EXP": "math", "SIN": "math", "COS": "math", "FLOOR": "math", "CEIL": "math", "ROUND": "math",
    "SQUARED_DIFFERENCE": "math", "FLOOR_DIV": "math", "FLOOR_MOD": "math", "POW": "math", "SIGN": "math",
    "ZEROS_LIKE": "math", "FILL": "math", "TILE": "reshape",
    "EQUAL": "compare", "NOT_EQUAL": "compare", "GREATER": "compare", "GREATER_EQUAL": "compare",
    "LESS": "compare", "LESS_EQUAL": "compare", "LOGICAL_AND": "compare", "LOGICAL_OR": "compare",
    "LOGICAL_NOT": "compare",
    "SELECT": "select", "SELECT_V2": "select", "SHAPE": "shape", "CAST": "cast",
    "IF": "control", "WHILE": "control", "CALL_ONCE": "control",
    "VAR_HANDLE": "variable", "READ_VARIABLE": "variable", "ASSIGN_VARIABLE": "variable",
}
#: Activation builtins -> ``attrs["fn"]``, in the PyTorch front-end's vocabulary so both views agree.
ACT_FNS: dict[str, str] = {
    "RELU": "relu", "RELU6": "relu6", "LOGISTIC": "sigmoid", "TANH": "tanh", "HARD_SWISH": "hardswish",
    "LEAKY_RELU": "leaky_relu", "PRELU": "prelu", "GELU": "gelu", "ELU": "elu", "RELU_N1_TO_1": "hardtanh",
    "RELU_0_TO_1": "relu_0_to_1",
}
#: Activation fn -> the builtins a converter emits for it (SiLU is x * sigmoid(x); hard-sigmoid is
#: relu6(x + 3) / 6). A fn missing here (mish, softplus, ...) has no known lowering: its class decides.
FN_BUILTINS: dict[str, tuple[str, ...]] = {
    **{fn: (b,) for b, fn in ACT_FNS.items()}, "silu": ("LOGISTIC", "MUL"), "swish": ("LOGISTIC", "MUL"),
    "hardsigmoid": ("ADD", "RELU6", "MUL"), "clip": ("MINIMUM", "MAXIMUM"),
}
#: Op types of the ONNX and PyTorch front-ends (lower-cased) -> the builtins they convert to.
OP_TYPE_BUILTINS: dict[str, tuple[str, ...]] = {
    "neg": ("NEG",), "abs": ("ABS",), "sqrt": ("SQRT",), "rsqrt": ("RSQRT",), "square": ("SQUARE",),
    "log": ("LOG",), "exp": ("EXP",), "sin": ("SIN",), "cos": ("COS",), "floor": ("FLOOR",), "ceil": ("CEIL",),
    "round": ("ROUND",), "pow": ("POW",), "reciprocal": ("DIV",), "sign": ("SIGN",),
    "max": ("MAXIMUM",), "maximum": ("MAXIMUM",), "min": ("MINIMUM",), "minimum": ("MINIMUM",),
    "equal": ("EQUAL",), "eq": ("EQUAL",), "greater": ("GREATER",), "gt": ("GREATER",),
    "greaterorequal": ("GREATER_EQUAL",), "ge": ("GREATER_EQUAL",), "less": ("LESS",), "lt": ("LESS",),
    "lessorequal": ("LESS_EQUAL",), "le": ("LESS_EQUAL",), "and": ("LOGICAL_AND",), "or": ("LOGICAL_OR",),
    "not": ("LOGICAL_NOT",), "where": ("SELECT_V2",), "shape": ("SHAPE",), "cast": ("CAST",),
    "sub": ("SUB",), "div": ("DIV",), "truediv": ("DIV",), "range": ("RANGE",), "tile": ("TILE",),
    "maxpool": ("MAX_POOL_2D",), "max_pool2d": ("MAX_POOL_2D",), "maxpool2d": ("MAX_POOL_2D",),
    "averagepool": ("AVERAGE_POOL_2D",), "avg_pool2d": ("AVERAGE_POOL_2D",), "avgpool2d": ("AVERAGE_POOL_2D",),
    "gather": ("GATHER",), "split": ("SPLIT",), "chunk": ("SPLIT",), "embedding": ("GATHER",),
    "reducemax": ("REDUCE_MAX",), "reducesum": ("SUM",), "reducemean": ("MEAN",), "sum": ("SUM",),
    "mean": ("MEAN",), "logsoftmax": ("LOG_SOFTMAX",), "log_softmax": ("LOG_SOFTMAX",),
    "if": ("IF",), "loop": ("WHILE",), "scan": ("WHILE",),
    "topk": ("TOPK_V2",), "nonmaxsuppression": ("NON_MAX_SUPPRESSION_V5",), "onehot": ("ONE_HOT",),
    "convtranspose": ("TRANSPOSE_CONV",), "lstm": ("UNIDIRECTIONAL_SEQUENCE_LSTM",),
}
#: The builtins an op class becomes when its op type says nothing more specific.
CLASS_BUILTINS: dict[str, tuple[str, ...]] = {
    "conv": ("CONV_2D",), "dwconv": ("DEPTHWISE_CONV_2D",), "fc": ("FULLY_CONNECTED",),
    "matmul": ("BATCH_MATMUL",), "add": ("ADD",), "mul": ("MUL",), "concat": ("CONCATENATION",),
    "pool": ("AVERAGE_POOL_2D",), "global_pool": ("MEAN",), "softmax": ("SOFTMAX",), "reshape": ("RESHAPE",),
    "transpose": ("TRANSPOSE",), "pad": ("PAD",), "resize": ("RESIZE_BILINEAR",), "slice": ("STRIDED_SLICE",),
    "reduce": ("MEAN",), "embedding": ("GATHER",), "minmax": ("MAXIMUM",), "select": ("SELECT_V2",),
    "shape": ("SHAPE",), "cast": ("CAST",),
    # layer / group / instance norm: the decomposition the TFLite converter writes
    "norm": ("MEAN", "SQUARED_DIFFERENCE", "ADD", "RSQRT", "SUB", "MUL"),
}


def builtin_class(builtin: str) -> tuple[str, dict[str, Any]]:
    """(op class, attrs) of a TFLite builtin; ``unknown`` for builtins without a class."""
    if builtin in ACT_FNS:
        return "act", {"fn": ACT_FNS[builtin]}
    return BUILTIN_CLASSES.get(builtin, "unknown"), {}


def tflite_builtins(op_type: str, op_class: str, attrs: dict[str, Any], frontend: str) -> tuple[str, ...] | None:
    """The TFLite builtins ``op`` is (a ``.tflite`` op) or becomes once converted; None when unknown.

    Custom ops, identity-like ops and the ``unknown`` class have none."""
    if op_class in ("custom", "identity"):
        return None
    if frontend == "tflite":
        return (op_type,)
    if op_class == "act":
        return FN_BUILTINS.get(str(attrs.get("fn", "")))
    if op_class == "resize" and str(attrs.get("mode", "")).startswith("nearest"):
        return ("RESIZE_NEAREST_NEIGHBOR",)
    key = op_type.lower().replace("_", "") if op_type.lower() not in OP_TYPE_BUILTINS else op_type.lower()
    if key in OP_TYPE_BUILTINS:
        return OP_TYPE_BUILTINS[key]
    if op_class == "unknown":
        return None
    return CLASS_BUILTINS.get(op_class)

"""Step 2, what runs: a MODEL argument (bundled name, timm:NAME, module:factory, .onnx, .tflite) resolved to a
front-end-independent :class:`ModelGraph` (ops in execution order, tensors, shapes, parameters, MACs)."""

from tap_edge.core.lazy import lazy_exports

__all__ = ["LoadedModel", "ModelGraph", "Op", "Preprocess", "Tensor", "describe_model", "list_models",
           "load_graph", "load_model", "register_model"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "ModelGraph": "tap_edge.graph.graph", "Op": "tap_edge.graph.graph", "Tensor": "tap_edge.graph.graph",
    **{n: "tap_edge.graph.models" for n in ("LoadedModel", "Preprocess", "describe_model", "list_models",
                                            "load_graph", "load_model", "register_model")},
})

"""tap-edge: fit neural networks onto phones and microcontrollers.

The Python face (one import for a notebook user; each name is imported on first use, so ``import tap_edge``
loads neither torch nor a runtime)::

    import tap_edge
    report = tap_edge.check("efficientnet_lite0", "stm32*", bits="w4a8")      # CheckReport
    plan = tap_edge.make_plan(tap_edge.PlanRequest(model="resnet8", device="nrf52840", calib="photos/",
                                                   budgets=tap_edge.BudgetSpec(flash_like_bits=4)))
    result = tap_edge.evaluate_plan(tap_edge.EvalRequest(model="resnet8", data="photos/", plan="plan.json"))
    artifact = tap_edge.compile("resnet8", "tflite", tap_edge.BitAssignment.load("plan.json"), "build/",
                                device="stm32h743")                              # Artifact(path, manifest)
    measured = tap_edge.measure(artifact.path, device="stm32h743")             # MeasureReport

The data path, one folder per step, in this import order (each imports only what is above it; a test keeps
it): ``core`` (leaves) <- ``documents`` (every JSON a command writes) <- ``graph`` (what runs) <- ``devices``
(where it must run) <- ``fit`` (will it fit?) <- ``quantize`` (fake-quantize and score) <- ``plan`` (make it
fit) <- ``backends`` (build it and prove it). ``report`` imports only ``core`` and ``documents``; ``search``
(the TAP search) stands on ``plan``; ``cli`` stands on everything and nothing imports it.
"""

from tap_edge.core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "check": "tap_edge.fit.checker",
    "BudgetSpec": "tap_edge.plan.budgets",
    "PlanRequest": "tap_edge.plan.pipeline",
    "make_plan": "tap_edge.plan.pipeline",
    "EvalRequest": "tap_edge.plan.pipeline",
    "evaluate_plan": "tap_edge.plan.pipeline",
    "PTQConfig": "tap_edge.quantize.ptq",
    "ptq": "tap_edge.quantize.ptq",
    "quantize_model": "tap_edge.quantize.ptq",
    "BitAssignment": "tap_edge.fit.bits",
    "compile": "tap_edge.backends:compile_model",
    "measure": "tap_edge.backends.verdict:measure_report",
    "get_backend": "tap_edge.backends",
    "list_backends": "tap_edge.backends",
    "get_device": "tap_edge.devices",
    "list_devices": "tap_edge.devices",
    "load_model": "tap_edge.graph.models",
    "from_module": "tap_edge.graph.models",
    "Preprocess": "tap_edge.graph.models",
    "set_preprocess": "tap_edge.graph.convert",
    "load_graph": "tap_edge.graph.models",
    "list_models": "tap_edge.graph.models",
    "get_proxy": "tap_edge.plan.proxies",
    "list_proxies": "tap_edge.plan.proxies",
    "read_document": "tap_edge.documents",
}
__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

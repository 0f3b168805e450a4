"""Sequential PTQ: one pass over the model's torch.fx graph, the float and the quantized model in lockstep.

The folded float model and its quantized copy are run node by node on the whole calibration batch (values
are dropped after their last use). At each quantizable layer, in execution order, the layer's input in the
quantized model (every preceding layer already rounded and its activations quantized) and in the float model
are at hand: the layer's input quantizer is calibrated on the first, the weights are rounded
(:mod:`tap_edge.quantize.rounding`) to reproduce the float layer's output on the float input from the
quantized input, the bias is corrected for the mean shift that is left, and the quantized layer then runs on
to feed the next one. This is GPTQ's and AdaRound's sequential calibration at the cost of one forward pass of
each model, instead of one pass per layer.

A layer the graph does not reach as a module call (inside a traced leaf) keeps round-to-nearest; its
activation ranges are then calibrated by a final pass of the whole quantized model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.fx import Graph, Node
from torch.fx.node import map_arg

from tap_edge.core.console import progress
from tap_edge.core.errors import UserError
from tap_edge.quantize.rounding import mean_shift


@dataclass
class LayerJob:
    """One quantizable module: its name and planned weight width (2..8 integer, 16 / 32 float)."""

    module: str
    weight_bits: int


def trace(model: nn.Module, needed_by: str = "sequential PTQ",
          hint: str = "use rounding 'nearest' without bias correction for this model") -> Graph:
    """The torch.fx graph of ``model`` with the graph front-end's tracer (torch.nn and timm leaves kept whole)."""
    from tap_edge.graph.frontends.torch_frontend import _Tracer

    try:
        return _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - user model code: say which step needs the trace
        raise UserError(f"{needed_by} needs a model torch.fx can trace ({type(e).__name__}: {e})", hint) from None


def _attr(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _has_module(root: nn.Module, target: str) -> bool:
    try:
        root.get_submodule(target)
    except AttributeError:
        return False
    return True


def _run_node(root: nn.Module, node: Node, env: dict[Node, Any], args_in: Any = None) -> Any:
    args, kwargs = map_arg((node.args, node.kwargs), lambda n: env[n])
    if node.op == "call_module":
        return root.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    if node.op == "get_attr":
        return _attr(root, str(node.target))
    if node.op == "placeholder":
        return args_in
    return None  # output


def run_sequential(q: nn.Module, f: nn.Module, graph: Graph, jobs: list[LayerJob], calib: torch.Tensor,
                   round_layer: Callable[[str, nn.Module, torch.Tensor, torch.Tensor, int], None],
                   description: str, bias_correction: bool = False) -> set[str]:
    """Run ``f`` (float) and ``q`` (being quantized) over ``graph`` on ``calib`` (a module of the graph that only
    ``q`` has is an identity in ``f``); at each job's first call,
    calibrate its input quantizer, call ``round_layer(name, mod_q, x_q, x_f, bits)``, then run the layer and
    (``bias_correction``) add the mean output shift to the bias, and calibrate its output quantizer. Returns
    the modules handled (the others were not reached)."""
    by_name = {j.module: j for j in jobs}
    nodes = list(graph.nodes)
    last_use: dict[Node, int] = {}
    for i, node in enumerate(nodes):
        for a in node.all_input_nodes:
            last_use[a] = i
    if sum(1 for n in nodes if n.op == "placeholder") != 1:
        raise UserError("sequential PTQ handles models with one input", "use rounding 'nearest'")
    env_q: dict[Node, Any] = {}
    env_f: dict[Node, Any] = {}
    done: set[str] = set()
    with torch.no_grad(), progress(description, total=len(jobs)) as bar:
        for i, node in enumerate(nodes):
            target = str(node.target)
            job = by_name.get(target) if node.op == "call_module" and target not in done else None
            if job is not None and len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], Node):
                x_q, x_f = env_q[node.args[0]], env_f[node.args[0]]
                mod_q, mod_f = q.get_submodule(target), f.get_submodule(target)
                fq = getattr(mod_q, "input_quant", None)
                if fq is not None and fq.observing:
                    fq.observe(x_q)
                    fq.finish()
                x_in = fq(x_q) if fq is not None else x_q
                round_layer(target, mod_q, x_in, x_f, job.weight_bits)
                out, out_f = mod_q.forward(x_in), mod_f(x_f)  # forward(): the input is quantized already
                if bias_correction and job.weight_bits <= 8:
                    shift = mean_shift(out_f, out, isinstance(mod_q, nn.Linear))
                    if mod_q.bias is None:
                        mod_q.bias = nn.Parameter(shift.clone(), requires_grad=False)
                    else:
                        mod_q.bias.add_(shift)
                    out = out + (shift if isinstance(mod_q, nn.Linear) else shift.reshape(-1, *[1] * (out.dim() - 2)))
                fo = getattr(mod_q, "output_quant", None)
                if fo is not None:
                    if fo.observing:
                        fo.observe(out)
                        fo.finish()
                    out = fo(out)
                env_q[node] = out
                env_f[node] = out_f
                done.add(target)
                bar.advance()
            elif node.op == "call_module" and not _has_module(f, target):
                # a module only the quantized model has (a tensor's activation quantizer): identity in float
                env_q[node] = _run_node(q, node, env_q, calib)
                env_f[node] = env_f[node.args[0]]
            else:
                env_q[node] = _run_node(q, node, env_q, calib)
                env_f[node] = _run_node(f, node, env_f, calib)
            for a in node.all_input_nodes:
                if last_use.get(a) == i:
                    env_q.pop(a, None)
                    env_f.pop(a, None)
    return done


def check_weights(name: str, mod: nn.Module) -> None:
    """One line for a layer whose (folded) weights are not all finite."""
    if not bool(torch.isfinite(mod.weight).all()):
        raise UserError(f"layer '{name}' has NaN or infinite weights", "check the checkpoint (and BatchNorm "
                        "statistics: a negative running variance folds to NaN)")


__all__ = ["LayerJob", "check_weights", "run_sequential", "trace"]

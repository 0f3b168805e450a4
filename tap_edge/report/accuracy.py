"""Section "Accuracy vs size" from :class:`~tap_edge.documents.EvalResult` and :class:`~tap_edge.documents.Plan`:
each evaluated bit assignment as accuracy against its model bytes (the chosen plan, matched by ``plan_id``,
beside uniform widths), and a plan's ``--sweep`` as proxy objective against the model bytes of each point. Both
panels count the model's own flash (weights, scales, biases, float constants; no runtime code)."""

from __future__ import annotations

from typing import Any

from tap_edge.core.units import fmt_bytes
from tap_edge.documents import EvalResult, Plan
from tap_edge.report.html import (
    BLUE,
    GREY,
    RED,
    byte_scale,
    esc,
    figure,
    finish,
    fmt_b,
    fmt_num,
    guard,
    how,
    table,
)

ID, TITLE = "accuracy", "Accuracy vs size"
HOW = ("left: each point is one evaluated bit assignment, further right is bigger (weights, scales and biases), "
       "higher is more accurate; grey diamonds are uniform widths, the red star is the chosen plan. A plan above "
       "the uniform points at the same size is the win. Right (with <code>plan --sweep</code>): the proxy "
       "objective the allocator minimises at each flash budget (the Pareto front, flash including the runtime's "
       "code), the chosen plan and its budget.")


def _metric(evals: list[EvalResult]) -> tuple[str, str]:
    """Top-1 when the labels mean something to the model (the float model gets some right), else agreement."""
    if evals and all(e.top1 is not None for e in evals) and any((e.float_top1 or 0) > 0 for e in evals):
        return "top1", "top-1 accuracy (%)"
    return "agreement", "top-1 agreement with the float model (%)"


def _value(e: EvalResult, key: str) -> float:
    return 100.0 * (e.top1 if key == "top1" and e.top1 is not None else e.agreement)


def _log_axis(ax: Any, xs: list[float], div: float) -> bool:
    """A log x axis with plain tick labels when the sizes span more than 3x; sets the limits either way."""
    log = max(xs) / min(xs) > 3
    if log:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 1.5, 2, 3, 4, 5, 6, 8)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(min(xs) / div / 1.15, max(xs) / div * 1.25)
    else:
        ax.set_xlim(0, max(xs) / div * 1.15)
    return log


def _accuracy_panel(ax: Any, uniform: list[EvalResult], chosen: EvalResult | None, key: str, ylabel: str) -> None:
    xs = [float(e.model_bytes) for e in [*uniform, *([chosen] if chosen else [])] if e.model_bytes > 0]
    div, unit = byte_scale(max(xs))
    if uniform:
        pts = sorted(uniform, key=lambda e: e.model_bytes)
        ax.scatter([e.model_bytes / div for e in pts], [_value(e, key) for e in pts], marker="D", s=70, color=GREY,
                   zorder=3, label="uniform bits")
        for e in pts:
            ax.annotate(e.bits, (e.model_bytes / div, _value(e, key)), xytext=(7, -4), textcoords="offset points",
                        fontsize=11, color="#444444")
    if chosen is not None:
        v = _value(chosen, key)
        ax.scatter([chosen.model_bytes / div], [v], marker="*", s=380, color=RED, zorder=4, edgecolor="black",
                   label=f"chosen plan ({fmt_bytes(chosen.model_bytes)}, {v:.4g}%)")
    log = _log_axis(ax, xs, div)
    ax.set_xlabel(f"model bytes: weights + scales + biases ({unit}{', log scale' if log else ''})")
    ax.set_ylabel(ylabel)
    ax.set_title("accuracy of the evaluated assignments")


def _sweep_panel(ax: Any, plan: Plan) -> None:
    pts = sorted(plan.sweep, key=lambda p: p.model_bytes)
    code = plan.predicted.flash_bytes - plan.predicted.model_bytes  # the runtime's code, in the flash budget
    budget = plan.budgets.flash_bytes - code if plan.budgets.flash_bytes else None
    xs = [float(p.model_bytes) for p in pts] + [float(plan.predicted.model_bytes)] + ([budget] if budget else [])
    div, unit = byte_scale(max(xs))
    ax.plot([p.model_bytes / div for p in pts], [p.objective for p in pts], "-o", color=BLUE, lw=2, ms=6,
            label=f"Pareto front ({plan.proxy} plans, --sweep)")
    ax.scatter([plan.predicted.model_bytes / div], [plan.solver.objective], marker="*", s=380, color=RED, zorder=4,
               edgecolor="black", label=f"chosen plan ({fmt_bytes(plan.predicted.model_bytes)})")
    if budget:
        ax.axvline(budget / div, color="#333333", ls=":", lw=1.5,
                   label=f"flash budget less runtime code {fmt_bytes(budget)}")
    log = _log_axis(ax, xs, div)
    ax.set_xlabel(f"model bytes: weights + scales + biases ({unit}{', log scale' if log else ''})")
    ax.set_ylabel("proxy objective (summed cost, lower is better)")
    ax.set_title("proxy objective along the sweep")


def _plot(model: str, plan: Plan | None, evals: list[EvalResult]) -> str:
    uniform = [e for e in evals if e.plan is None]
    chosen = next((e for e in evals if e.plan_id == plan.plan_id), None) if plan is not None else None
    key, ylabel = _metric(evals)
    panels = int(bool(uniform or chosen)) + int(plan is not None and bool(plan.sweep))
    fig = figure(12 if panels == 2 else 10, 6.2)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if uniform or chosen:
        _accuracy_panel(axes[0], uniform, chosen, key, ylabel)
    if plan is not None and plan.sweep:
        _sweep_panel(axes[-1], plan)
    where = f" on {plan.device}" if plan is not None else ""
    return finish(fig, f"{model}{where}: accuracy against size", "accuracy-vs-size", "accuracy against flash size")


def _evals_table(evals: list[EvalResult]) -> str:
    rows = [[esc(e.model), esc(e.bits) + (f"<br><span class='small muted'>{esc(e.plan)}</span>" if e.plan else ""),
             f"{100 * e.top1:.2f}%" if e.top1 is not None else "–",
             f"{100 * e.float_top1:.2f}%" if e.float_top1 is not None else "–",
             f"{100 * e.agreement:.2f}%", fmt_num(e.kl), fmt_b(e.model_bytes), str(e.n_images)] for e in evals]
    return "<h4>Evaluations</h4>" + table(["model", "bits / plan", "top-1", "float top-1", "agreement with float",
                                           "mean KL", "model bytes", "images"], rows, "narrow")


def wanted(plans: list[Plan], evals: list[EvalResult]) -> bool:
    return bool(evals) or any(p.sweep for p in plans)


def render(plans: list[Plan], evals: list[EvalResult]) -> str:
    out = [how(HOW)]
    models = list(dict.fromkeys([p.model for p in plans] + [e.model for e in evals]))
    for model in models:
        mine = [e for e in evals if e.model == model]
        for plan in [p for p in plans if p.model == model]:
            if not (mine or plan.sweep):
                continue
            out.append(f"<h3>{esc(model)} · {esc(plan.device)} · proxy {esc(plan.proxy)}</h3>")
            if mine and not any(e.plan_id == plan.plan_id for e in mine):
                out.append('<p class="small muted">The chosen plan was not evaluated (<code>tap-edge eval '
                           "--plan plan.json</code> adds it).</p>")
            out.append(guard(_plot, model, plan, mine))
        if not any(p.model == model for p in plans) and len([e for e in mine if e.model_bytes > 0]) >= 2:
            out.append(f"<h3>{esc(model)}</h3>")
            out.append(guard(_plot, model, None, mine))
    if evals:
        out.append(_evals_table(evals))
    return "".join(out)


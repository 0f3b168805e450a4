"""LayerStats (tap_edge.plan.stats) and the sensitivity proxies (tap_edge.plan.proxies) on small models with random
calibration tensors: every registered proxy must give a finite non-negative cost for every layer and width."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from tap_edge.core.errors import UserError
from tap_edge.graph.frontends.torch_frontend import trace_module
from tap_edge.graph.models import load_model
from tap_edge.plan.proxies import (
    ProxyContext,
    ProxyError,
    activation_costs,
    compute_costs,
    cost_table,
    get_proxy,
    list_proxies,
    register_proxy,
)
from tap_edge.plan.proxies.builtin import (
    hutchinson_traces,
    orthogonality_matrix,
    output_space_traces,
    tap_program_source,
)
from tap_edge.plan.stats import LAYERSTATS_API, compute_layer_stats, load_layer_stats, save_layer_stats
from tap_edge.quantize.ptq import folded_copy

MODELS = {"resnet8": (3, 32, 32), "timm:mobilenetv2_050": (3, 64, 64)}


@pytest.fixture(scope="module")
def setups() -> dict:
    out = {}
    for spec, shape in MODELS.items():
        lm = load_model(spec)
        torch.manual_seed(0)
        for m in lm.module.modules():  # an untrained model with non-trivial BatchNorm
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(4, *shape)
        graph = trace_module(lm.module, x[:1], spec)
        stats = compute_layer_stats(lm.module, graph, x)
        out[spec] = {"model": lm.module, "graph": graph, "x": x, "stats": stats,
                     "ctx": ProxyContext(model=lm.module, graph=graph, calib=x)}
    return out


@pytest.mark.parametrize("spec", list(MODELS))
@pytest.mark.parametrize("proxy", list_proxies())
def test_every_proxy_gives_finite_nonnegative_costs(setups: dict, proxy: str, spec: str) -> None:
    s = setups[spec]
    costs = get_proxy(proxy)(s["stats"], s["ctx"])
    assert set(costs) == {st.name for st in s["stats"]}
    for st in s["stats"]:
        row = costs[st.name]
        assert sorted(row) == [2, 3, 4, 5, 6, 7, 8]
        assert all(math.isfinite(v) and v >= 0 for v in row.values()), (st.name, row)
    table = cost_table(costs, activation_costs(s["stats"], costs))
    for row in table.values():
        assert len(row) == 7 * 3 and all(math.isfinite(v) and v >= 0 for v in row.values())


def test_layer_stats_content(setups: dict) -> None:
    s = setups["resnet8"]
    stats, x = s["stats"], s["x"]
    assert [st.name for st in stats] == [op.name for op in s["graph"].quantizable_ops()]
    folded = folded_copy(s["model"])
    mods = dict(folded.named_modules())
    for st in stats:
        assert np.allclose(st.weight, mods[st.module].weight.detach().numpy(), atol=1e-6)  # BN folded
        assert st.weight.shape == st.grad.shape == st.fisher.shape and (st.fisher >= 0).all()
        assert np.all(np.diff(st.qerr) < 0) and st.qscale.shape == (7, st.weight.shape[0])
        assert np.isclose(st.qerr[2], ((st.quantized_weight(4) - st.weight) ** 2).sum(), rtol=1e-4)
        assert st.out_gram.shape == (4, 4) and st.n_samples == 4
    # the gradient is that of the mean label-free loss on the batch
    w = mods[stats[0].module].weight
    w.requires_grad_(True)
    out = folded(x)
    loss = nn.functional.cross_entropy(out, out.detach().argmax(1))
    (g,) = torch.autograd.grad(loss, [w])
    assert np.allclose(stats[0].grad, g.numpy(), atol=1e-6, rtol=1e-4)
    # activation statistics and Gram matrix of the first layer's output (conv + BN + ReLU)
    y = torch.relu(folded.stem(x)).detach()
    assert stats[0].out_stats["min"] == pytest.approx(0.0) and stats[0].out_stats["max"] == pytest.approx(
        float(y.max()), rel=1e-5)
    assert np.allclose(stats[0].out_gram, (y.flatten(1) @ y.flatten(1).T).double().numpy(), rtol=1e-4)
    assert stats[0].in_stats["max"] == pytest.approx(float(x.max()))
    # one backward pass for the whole batch: same gradient, Fisher of the batch sum
    whole = compute_layer_stats(s["model"], s["graph"], x, grad_batch=4)
    assert np.allclose(whole[3].grad, stats[3].grad, atol=1e-6, rtol=1e-4)
    assert np.allclose(whole[3].fisher, 4 * whole[3].grad ** 2, atol=1e-9, rtol=1e-3)


def test_program_input_is_plain_and_documented(setups: dict) -> None:
    d = setups["timm:mobilenetv2_050"]["stats"][3].to_program_input()
    documented = set(re.findall(r"\b([a-z][a-z0-9_]*)\b", LAYERSTATS_API))
    for k, v in d.items():
        assert isinstance(v, np.ndarray | float | int | str | list), (k, type(v))
        assert not isinstance(v, torch.Tensor)
        base = re.sub(r"^(in|out)_", "", k)
        assert k in documented or (k.startswith(("in_", "out_")) and f"in_{base}" in documented), k
    assert d["op_class"] in ("conv", "dwconv", "fc") and d["bits"] == [2, 3, 4, 5, 6, 7, 8]


def test_layer_stats_save_load(setups: dict, tmp_path) -> None:
    stats = setups["resnet8"]["stats"]
    p = save_layer_stats(stats, tmp_path / "s.npz")
    back = load_layer_stats(p)
    assert [b.name for b in back] == [s.name for s in stats]
    for a, b in zip(stats, back, strict=True):
        assert a.in_stats == b.in_stats and a.fused == b.fused and a.bits == b.bits
        for k in ("weight", "grad", "fisher", "qscale", "qerr", "out_gram"):
            assert np.array_equal(getattr(a, k), getattr(b, k))
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(UserError, match="unreadable LayerStats"):
        load_layer_stats(tmp_path / "bad.npz")
    with pytest.raises(UserError, match="not found"):
        load_layer_stats(tmp_path / "none.npz")


def test_stats_errors(setups: dict) -> None:
    s = setups["resnet8"]
    with pytest.raises(UserError, match="label-free loss"):
        compute_layer_stats(s["model"], s["graph"], s["x"], loss="mse")
    with pytest.raises(UserError, match="non-empty"):
        compute_layer_stats(s["model"], s["graph"], s["x"][:0])
    other = setups["timm:mobilenetv2_050"]["graph"]
    with pytest.raises(UserError, match="not a module"):
        compute_layer_stats(s["model"], other, s["x"])


def test_activation_costs_and_table(setups: dict) -> None:
    stats = setups["resnet8"]["stats"]
    raw = activation_costs(stats)
    for row in raw.values():
        assert row[32] == 0.0 and row[16] < row[8] * 1e-3 and row[8] > 0
    w = get_proxy("fisher")(stats, None)
    scaled = activation_costs(stats, w)
    table = cost_table(w, scaled)
    st = stats[2]
    assert table[st.name][(4, 16)] == pytest.approx(w[st.name][4] + scaled[st.name][16])
    with pytest.raises(ProxyError, match="different layers"):
        cost_table(w, {k: v for k, v in scaled.items() if k != st.name})
    full = compute_costs("uniform", stats)
    assert set(full[st.name]) == {(b, a) for b in range(2, 9) for a in (8, 16, 32)}


def test_registry() -> None:
    names = list_proxies()
    for n in ("hawq", "ompq", "fisher", "qerror", "uniform", "random", "tap", "tap-seed"):
        assert n in names
    assert list_proxies("h*") == ["hawq"]
    with pytest.raises(UserError, match="did you mean hawq"):
        get_proxy("hawk")
    assert get_proxy("hawq").needs_model and not get_proxy("ompq").needs_model
    assert "Hutchinson" in get_proxy("hawq").fn.__doc__
    with pytest.raises(ValueError, match="already registered"):
        register_proxy("fisher")(lambda stats, ctx: {})


def test_custom_proxy_and_contract(setups: dict) -> None:
    from tap_edge.plan.proxies import _PROXIES

    stats = setups["resnet8"]["stats"]

    @register_proxy("_test_negative")
    def negative(stats, ctx, value=-1.0):
        """A broken proxy."""
        return {s.name: dict.fromkeys(s.bits, value) for s in stats}

    try:
        with pytest.raises(ProxyError, match="invalid cost -1.0"):
            get_proxy("_test_negative")(stats)
        assert get_proxy("_test_negative")(stats, None, value=2.0)[stats[0].name][4] == 2.0
        assert get_proxy("_test_negative").summary == "A broken proxy."
    finally:
        _PROXIES._entries.pop("_test_negative", None)
    with pytest.raises(UserError, match="needs the PyTorch model"):
        get_proxy("hawq")(stats, ProxyContext())


@pytest.mark.parametrize(("proxy", "program", "first_line"), [
    ("tap-seed", "tap_seed.py", "HAND-WRITTEN SEED"),
    ("tap", "tap_discovered.py", "DISCOVERED BY SEARCH"),
])
def test_tap_programs_in_process_match_sandbox(setups: dict, proxy: str, program: str, first_line: str) -> None:
    from tap_edge.plan.proxies.builtin import PROGRAMS

    stats = setups["resnet8"]["stats"]
    src = (PROGRAMS / program).read_text()
    if proxy == "tap":
        assert tap_program_source() == src  # the tap proxy runs the shipped discovered program
    assert first_line in src
    ns: dict = {}
    exec(compile(src, program, "exec"), ns)  # the shipped programs are trusted code
    direct = [ns["proxy"](s.to_program_input(), list(s.bits)) for s in stats]
    via = get_proxy(proxy)(stats, None)
    for s, row in zip(stats, direct, strict=True):
        assert np.allclose([via[s.name][b] for b in s.bits], row, rtol=1e-9)
        assert all(row[i] >= row[i + 1] for i in range(len(row) - 1))  # fewer bits never cheaper
    with pytest.raises(UserError, match="TAP proxy program failed"):
        get_proxy("tap")(stats, None, source="import os\ndef proxy(layer, bits):\n    return [0.0] * len(bits)\n")


def test_discovered_program_has_its_provenance() -> None:
    """The shipped program names its run and candidate, and that run's summary beside it has the same code."""
    import re

    from tap_edge.plan.proxies.builtin import DISCOVERED_PROGRAM, PROGRAMS

    src = DISCOVERED_PROGRAM.read_text()
    m = re.search(r"run (\w+), candidate (g\d+c\d+)", src)
    assert m, "no run / candidate in the header"
    summaries = [p.read_text() for p in PROGRAMS.glob("search_*.md")
                 if f"# TAP search run `{m.group(1)}`" in p.read_text()]
    assert len(summaries) == 1
    md = summaries[0]
    assert f"## Best program: {m.group(2)} " in md
    body = src[src.index("import numpy as np"):]
    assert body.strip() in md  # the code is the run's best program, unchanged


def test_discovered_program_is_the_best_of_the_archived_run(tmp_path) -> None:
    """The archived run (every event of the search) summarises to the shipped program."""
    import tarfile

    from tap_edge.plan.proxies.builtin import DISCOVERED_PROGRAM, PROGRAMS
    from tap_edge.search.summary import summarize

    with tarfile.open(PROGRAMS / "runs" / "rw3.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    best = summarize(tmp_path / "rw3").best
    assert f"candidate {best.id})" in DISCOVERED_PROGRAM.read_text()
    body = DISCOVERED_PROGRAM.read_text()
    assert body[body.index("import numpy as np"):].strip() in best.code
    assert [step.id for step in best.lineage] == ["g1c8", "g0c0"]


def test_archived_photo_search_summarises_to_its_saved_program(tmp_path) -> None:
    """The 10 x 5 local-LLM search on the photo tasks (issue 13): its archive summarises to the program it saved,
    every candidate valid, on the four Lite1 / Lite2 tasks (not shipped as `tap`: see the transfer benchmark)."""
    import tarfile

    from tap_edge.plan.proxies.builtin import PROGRAMS
    from tap_edge.search.summary import summarize

    with tarfile.open(PROGRAMS / "runs" / "photos10x5.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    summary = summarize(tmp_path / "photos10x5")
    saved = (tmp_path / "photos10x5" / "best_proxy.py").read_text()
    assert f"candidate {summary.best.id})" in saved
    assert saved[saved.index("def proxy"):].strip() in summary.best.code
    data = summary.to_dict()
    assert data["candidates"] == 50 and data["valid"] == 50
    assert {t["task"] for t in data["tasks"]} == {"lite1-photos@3", "lite1-photos@4", "lite2-photos@3",
                                                  "lite2-photos@4"}


def test_ompq_orthogonality_and_modes(setups: dict) -> None:
    stats = setups["timm:mobilenetv2_050"]["stats"]
    orm = orthogonality_matrix(stats)
    assert orm.shape == (len(stats), len(stats)) and np.allclose(orm, orm.T)
    assert np.allclose(np.diag(orm), 1.0) and orm.min() >= 0 and orm.max() <= 1
    lin = get_proxy("ompq")(stats, None, per_bit="linear")
    row = lin[stats[0].name]
    assert row[8] == 0.0 and row[2] == pytest.approx(row[4] * 1.5)
    with pytest.raises(UserError, match="per-bit"):
        get_proxy("ompq")(stats, None, per_bit="square")


def test_hawq_estimators_agree_on_ranking(setups: dict) -> None:
    from scipy.stats import spearmanr

    s = setups["resnet8"]
    a = get_proxy("hawq")(s["stats"], s["ctx"])
    b = get_proxy("hawq")(s["stats"], s["ctx"], estimator="params", max_iter=40)
    ra = [a[st.name][4] for st in s["stats"]]
    rb = [b[st.name][4] for st in s["stats"]]
    assert spearmanr(ra, rb).correlation > 0.5
    with pytest.raises(UserError, match="estimator"):
        get_proxy("hawq")(s["stats"], s["ctx"], estimator="exact")


def test_qerror_in_two_threads_leaves_the_model_alone_and_matches_one_thread(setups: dict) -> None:
    """``functional_call`` swaps a module's weight while it runs: two worker threads in one module read each
    other's quantized weights and left one behind in the shared folded model (EfficientNet-Lite0: qerror and the
    kl proxy after it gave plans with 0% agreement). Each thread now runs its own copy."""
    s = setups["timm:mobilenetv2_050"]
    x = torch.randn(16, *MODELS["timm:mobilenetv2_050"], generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            ctx = ProxyContext(model=s["model"], graph=s["graph"], calib=x)
            before = {k: v.clone() for k, v in ctx.folded_model().state_dict().items()}
            results.append(get_proxy("qerror")(s["stats"], ctx))
            after = ctx.folded_model().state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before), "qerror changed the folded model"
    finally:
        torch.set_num_threads(threads)
    for name, row in results[0].items():
        assert row == pytest.approx(results[1][name], rel=1e-6, abs=1e-12), name


def test_qerror_model_level(setups: dict) -> None:
    s = setups["resnet8"]
    kl = get_proxy("qerror")(s["stats"], s["ctx"], level="model")
    assert all(v >= 0 for row in kl.values() for v in row.values())
    assert sum(row[2] for row in kl.values()) > 10 * sum(row[8] for row in kl.values())


def test_hutchinson_matches_exact_trace() -> None:
    """Linear softmax classifier: Tr(H) = mean_n sum_c p_nc (1 - p_nc) ||x_n||^2 for the CE w.r.t. W."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 4, bias=False)
    x = torch.randn(16, 6)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny products: thread hand-offs would dominate
    try:
        tr, it = hutchinson_traces(lin, x, [lin.weight], "argmax_ce", max_iter=400, min_iter=400)
        tr_kl, _ = hutchinson_traces(lin, x, [lin.weight], max_iter=400, min_iter=400)
        lin.weight.requires_grad_(True)
        tr_out = output_space_traces(lin, x, [lin.weight], probes=200)
        lin.weight.requires_grad_(False)
    finally:
        torch.set_num_threads(n)
    p = torch.softmax(lin(x), 1).detach()
    exact = float(((p * (1 - p)).sum(1) * (x ** 2).sum(1)).mean())
    assert it == 400 and tr[0] == pytest.approx(exact, rel=0.1)
    assert tr_kl[0] == pytest.approx(exact, rel=0.1)  # a linear model: the CE Hessian is the Gauss-Newton one
    assert tr_out[0] == pytest.approx(exact, rel=0.1)
    assert not lin.weight.requires_grad

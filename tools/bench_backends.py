"""Benchmark the backends: compile each model with each backend, measure it in a child process, compare with
tap-edge's prediction, print the tables of issue 5.

    .venv/bin/python tools/bench_backends.py                       # the default models and backends
    .venv/bin/python tools/bench_backends.py --models resnet8,ds_cnn --backends tflite --json out.json

    .venv/bin/python tools/bench_backends.py --backends vela        # every Ethos-U profile, VELA_MODELS

Every figure says how it was measured. Each (model, backend) runs on its own: a failure is recorded as an
error row and the results before it are kept (also written to ``--json`` after every row).

- latency: median / p90 of ``--runs`` timed runs after warm-up, host CPU, one thread (LiteRT for .tflite,
  ONNX Runtime for .onnx); TFLM latency is the reference kernels on the host (not a microcontroller figure).
- peak memory: the measurement child's VmHWM (= ``wait4`` ru_maxrss), and the same minus the runtime's
  import baseline.
- SRAM: tap-edge's arena prediction (``plan_arena``, TFLM host settings: 16-byte alignment, no aliasing, no
  scratch) vs TFLite Micro's arena (``print_allocations``: head = planned tensors, tail = persistent); also
  the prediction on the converted .tflite graph, which isolates planner error from graph differences.
- weights: tap-edge's flash model (weights + per-channel scales + int32 biases + float constants) vs the
  constant bytes in the artifact, in the same form (the artifact's extra metadata listed apart).
- agreement: top-1 agreement and cosine of the artifact's outputs with the PTQ fake-quant model on the
  sample photos (noise inputs for DS-CNN), and TFLM vs LiteRT on the same int8 inputs; TVM's with ONNX
  Runtime on the same ONNX graph.
- TVM: untuned, and with ``--tvm-tune-trials N`` also tuned by MetaSchedule (at most N trials; the database
  in ``--tvm-tune-db`` or tap-edge's cache is reused when it already holds them, shown as ``reused``); the
  TVM / ONNX Runtime latency ratio is taken from the same run, with the 1-minute load average at measurement.

    .venv/bin/python tools/bench_backends.py --models resnet8 --backends onnxruntime,tvm --bits fp32 \
        --tvm-tune-trials 300 --runs 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

DEFAULT_MODELS = "resnet8,ds_cnn,efficientnet_lite0,timm:mobilenetv2_100"
DEFAULT_BACKENDS = "tflite,onnxruntime,tvm"
#: The vela backend's bench models (``--vela-models``) and devices (every bundled profile with an Ethos-U runtime).
VELA_MODELS = "resnet8,ds_cnn,timm:mobilenetv2_050,efficientnet_lite0"


def ethos_u_targets(pattern: str = "*") -> list[tuple[str, str]]:
    """(device id, runtime name) of every bundled profile runtime that has an Ethos-U (a ``vela`` section)."""
    from tap_edge.devices import get_device, list_devices

    return [(d, rt.name) for d in list_devices(pattern) for rt in get_device(d).runtimes if rt.vela is not None]


def bench_vela(model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per Ethos-U runtime: the vela backend compiles ``model`` for the first one (the int8 .tflite of the
    TFLite path, its agreement, Vela); Vela then compiles that same int8 file for every other runtime. Each row:
    tap-edge's prediction (Vela on the stand-in .tflite, the rules model without Vela) vs Vela's figures."""
    from tap_edge.backends import get_backend
    from tap_edge.backends.reference import sample_inputs
    from tap_edge.devices import get_device
    from tap_edge.fit import ethos_u
    from tap_edge.fit.bits import BitAssignment
    from tap_edge.fit.checker import Checker
    from tap_edge.graph.models import load_graph, load_model

    b = get_backend("vela")
    b.require()
    lm = load_model(model)
    graph = load_graph(lm)
    bits = BitAssignment.load(args.plan) if args.plan else BitAssignment.parse(args.bits)
    calib = args.calib if lm.preprocess.input_size[0] == 3 else "noise"
    xs = sample_inputs(lm, max(args.samples, 16), calib)
    targets = ethos_u_targets(args.vela_devices)
    first = get_device(targets[0][0])
    out = Path(args.out) / "vela" / model.replace(":", "_")
    t0 = time.perf_counter()
    artifact = b.compile(lm, graph, bits, out / first.id, device=first, calib=xs.head(args.samples),
                         check=xs.head(16))
    compile_s = round(time.perf_counter() - t0, 2)
    int8 = artifact.path.with_name(artifact.manifest.backend_facts["int8_tflite"])
    rows = []
    for device_id, runtime_name in targets:
        device = get_device(device_id)
        rt = device.runtime(runtime_name)
        t1 = time.perf_counter()
        run = ethos_u.run_vela(int8, rt.vela, out / f"{device_id}-{runtime_name}")
        vela = ethos_u.figures_of(run.output, rt.vela, summary=run.summary, stdout=run.stdout, runtime=rt)
        vela_s = round(time.perf_counter() - t1, 2)
        predicted = ethos_u.predict(graph, bits, rt)
        rules = ethos_u.rules_figures(graph, bits, rt)
        verdict = Checker(graph, bits).check(device, runtime_name)
        rows.append({"model": model, "backend": "vela", "bits": bits.label(), "variant": "", "device": device_id,
                     "runtime": runtime_name, "compile_s": compile_s, "vela_s": vela_s, "int8": str(int8),
                     "agreement": artifact.manifest.agreement.model_dump() if artifact.manifest.agreement else None,
                     "vela": vela.to_dict(), "predicted": predicted.to_dict(), "rules": rules.to_dict(),
                     "prediction_by": ethos_u.prediction_note(predicted), "check": verdict.verdict,
                     "check_problems": verdict.problems, "vela_problems": vela_problems(device, rt, vela)})
    return rows


def vela_problems(device: Any, runtime: Any, vela: Any) -> list[str]:
    """Where Vela's own plan overflows the device's regions (the measured verdict's arithmetic: the optimised model
    and the runtime code in the weights region, Vela's SRAM and TFLite Micro's bytes in the arena region, a
    Dedicated_Sram arena beside the model off-chip); empty when it fits."""
    from tap_edge.fit.checker import memory_problems, region_limits

    flash = vela.file_bytes + runtime.code_bytes
    lim = region_limits(device, flash)
    problems = memory_problems(flash, vela.sram_need, "-", lim)
    if vela.dram_arena_bytes and not lim.shared and flash <= lim.flash_bytes < flash + vela.dram_arena_bytes:
        over = flash + vela.dram_arena_bytes - lim.flash_bytes
        problems.append(f"model and arena over {lim.flash_region} by {over} B")
    return problems


def print_vela_table(rows: list[dict[str, Any]]) -> None:
    """tap-edge's prediction vs Vela on every bench model and Ethos-U runtime (bytes; error = predicted vs Vela)."""
    vela_rows = [r for r in rows if r.get("backend") == "vela" and "vela" in r]
    if not vela_rows:
        return
    print("\n## Vela (Ethos-U): tap-edge's prediction vs Vela 5.2.0 on the vela backend's int8 .tflite")
    print("SRAM = Vela's Total SRAM used; flash = the optimised .tflite (TFLite Micro keeps it whole); constants = "
          "Vela's read-only tensor. predicted = Vela on tap-edge's stand-in .tflite (the check / plan prediction with "
          "Vela installed); rules = tap-edge's model of Vela (no Vela installed). NPU ms: Vela's estimate at the "
          "profile's NPU clock. check: tap-edge check's verdict (Vela installed); Vela fits: Vela's own plan against "
          "the device's regions.")
    print("| model | device (runtime) | NPU | memory mode | SRAM Vela | predicted | err | rules | err | flash Vela | "
          "predicted | err | rules | err | constants Vela | predicted | err | CPU ops | NPU ms (Vela) | check | "
          "Vela fits |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    worst = {(who, key): 0.0 for who in ("predicted", "rules") for key in ("sram", "flash")}
    false_fits = []
    for r in vela_rows:
        v, p, q = r["vela"], r["predicted"], r["rules"]
        for who, f in (("predicted", p), ("rules", q)):
            for key, fig in (("sram", "sram_bytes"), ("flash", "file_bytes")):
                if v[fig]:
                    worst[who, key] = max(worst[who, key], abs(100.0 * (f[fig] - v[fig]) / v[fig]))
        fits = not r.get("vela_problems")
        if r.get("check") == "FITS" and not fits:
            false_fits.append(f"{r['model']} on {r['device']} ({r['runtime']}): {'; '.join(r['vela_problems'])}")
        cpu = ", ".join(sorted({c["op"] for c in v["cpu_ops"]})) or "-"
        ms = f"{1e3 * v['total_cycles'] / v['clock_hz']:.3f}" if v.get("total_cycles") and v.get("clock_hz") else "-"
        print(f"| {r['model']} | {r['device']} ({r['runtime']}) | {v['accelerator']} | {v['memory_mode']} | "
              f"{v['sram_bytes']} | {p['sram_bytes']} | {_pct(p['sram_bytes'], v['sram_bytes'])} | {q['sram_bytes']} | "
              f"{_pct(q['sram_bytes'], v['sram_bytes'])} | {v['file_bytes']} | {p['file_bytes']} | "
              f"{_pct(p['file_bytes'], v['file_bytes'])} | {q['file_bytes']} | {_pct(q['file_bytes'], v['file_bytes'])}"
              f" | {v['read_only_bytes']} | {p['read_only_bytes']} | {_pct(p['read_only_bytes'], v['read_only_bytes'])}"
              f" | {len(v['cpu_ops'])} ({cpu}) | {ms} | {r.get('check', '-')} | {'yes' if fits else 'no'} |")
    print(f"\nlargest |error| of the prediction: SRAM {worst['predicted', 'sram']:.2f}%, flash "
          f"{worst['predicted', 'flash']:.2f}%; of the rules model (no Vela): SRAM {worst['rules', 'sram']:.2f}%, "
          f"flash {worst['rules', 'flash']:.2f}% ({len(vela_rows)} model x runtime pairs); false FITS: "
          f"{len(false_fits)}" + "".join(f"\n  false FITS: {x}" for x in false_fits))


def bench_one(
    model: str, backend: str, args: argparse.Namespace, tune_trials: int | None = None
) -> dict[str, Any]:
    """Compile, then measure in a child process; ``tune_trials``: the tvm backend's MetaSchedule budget."""
    from tap_edge.backends import get_backend
    from tap_edge.backends.measure import measure_artifact
    from tap_edge.backends.reference import sample_inputs
    from tap_edge.devices import get_device
    from tap_edge.fit.bits import BitAssignment
    from tap_edge.graph.models import load_graph, load_model

    row: dict[str, Any] = {
        "model": model,
        "backend": backend,
        "bits": args.bits,
        "variant": _variant(backend, tune_trials),
    }
    b = get_backend(backend)
    b.require()
    lm = load_model(model)
    graph = load_graph(lm)
    bits = BitAssignment.load(args.plan) if args.plan else BitAssignment.parse(args.bits)
    n_check = args.check_samples if lm.preprocess.input_size[0] == 3 else min(args.check_samples, 64)
    xs = sample_inputs(lm, max(args.samples, n_check))
    device = get_device(args.device) if args.device and b.serves(get_device(args.device)) else None
    if backend == "tvm" and args.cross:
        device = get_device(args.cross)
    options = b.check_options(None)
    out_dir = Path(args.out) / backend
    if tune_trials is not None:
        tune_db = Path(args.tvm_tune_db) if args.tvm_tune_db else None
        options = b.options_from_flags(tune_trials=tune_trials, tune_db=tune_db)
        out_dir = Path(args.out) / f"{backend}-tuned"
    t0 = time.perf_counter()
    artifact = b.compile(lm, graph, bits, out_dir, device=device, calib=xs.head(args.samples), check=xs.head(n_check),
                         options=options)
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    man = artifact.manifest
    tuning = man.backend_facts.get("tuning")
    if tuning:  # the database may hold a larger budget than asked for (reused as it is)
        row["variant"] = f"tuned, {tuning['trials_budget_total']} trials"
    row["artifact"] = str(artifact.path)
    row["manifest"] = man.to_dict()
    row["load_avg_1min"] = round(os.getloadavg()[0], 2)
    meas = measure_artifact(artifact.path, backend=backend, runs=args.runs, warmup=args.warmup, timeout=args.timeout)
    meas.pop("child_stdout", None)
    row["measure"] = meas
    row["graph"] = {"ops": len(graph.ops), "tensors": len(graph.tensors), "params": graph.params}
    return row


def _variant(backend: str, tune_trials: int | None) -> str:
    if backend != "tvm":
        return ""
    return "untuned" if tune_trials is None else f"tuned, {tune_trials} trials"


def _label(r: dict[str, Any]) -> str:
    return f"{r['backend']} ({r['variant']})" if r.get("variant") else r["backend"]


def _ratio(t: float | None, o: float | None) -> str:
    return f"{t / o:.2f}x" if t and o else "-"


def _pct(m: float | None, p: float | None) -> str:
    if m is None or not p:
        return "-"
    return f"{100.0 * (m - p) / p:+.2f}%"


def _kib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def _median(row: dict[str, Any]) -> float | None:
    return ((row.get("measure") or {}).get("latency") or {}).get("median_ms")


def print_tables(rows: list[dict[str, Any]]) -> None:
    print_vela_table(rows)
    ok = [r for r in rows if "error" not in r and r.get("backend") != "vela"]
    if not ok:
        return
    print("\n## Latency (host CPU, 1 thread; median / p90 ms)")
    print("| model | backend | runtime | median | p90 | TFLM ref. kernels median |")
    print("|---|---|---|---|---|---|")
    for r in ok:
        m = r["measure"]
        lat, tl = m.get("latency", {}), m.get("tflm_latency", {})
        print(
            f"| {r['model']} | {_label(r)} | {m.get('runtime')} | {lat.get('median_ms', '-')} | "
            f"{lat.get('p90_ms', '-')} | {tl.get('median_ms', '-')} |"
        )
    print("\n## Memory and artifact (KiB)")
    print(
        "| model | backend | artifact | child peak RSS (VmHWM) | wait4 maxrss | peak - import baseline | "
        "runtime figure |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in ok:
        m = r["measure"]
        tf = m.get("tflm") or {}
        if tf:
            fig = (
                f"TFLM arena {tf.get('arena_total_bytes')} B "
                f"(min constructing {m.get('tflm_min_arena_bytes')} B)"
            )
        elif m.get("tvm_planned_bytes") is not None:
            fig = f"Relax static plan {m['tvm_planned_bytes']} B"
        else:
            fig = (
                f"ORT session RSS {_kib(m.get('ort_session_rss_bytes'))} KiB, inference growth "
                f"{_kib(m.get('ort_inference_growth_bytes'))} KiB"
            )
        print(
            f"| {r['model']} | {_label(r)} | {_kib(m.get('artifact_bytes'))} | "
            f"{_kib(m.get('peak_rss_bytes'))} | "
            f"{_kib(m.get('wait4_maxrss_bytes'))} | {_kib(m.get('model_rss_bytes'))} | {fig} |"
        )
    print("\n## Predicted vs measured SRAM (TFLite Micro arena, bytes)")
    print(
        "| model | predicted (torch graph) | predicted (.tflite graph) | TFLM head | err head | TFLM tail | "
        "TFLM total | err total | min arena |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ok:
        tf = r["measure"].get("tflm") or {}
        if not tf:
            continue
        host = r["manifest"]["other_predictions"].get("tflm_host") or {}
        p = host.get("arena_bytes")  # head + persistent tail: compared with TFLM's total
        ph = host.get("arena_head_bytes", p)
        art = r["manifest"]["other_predictions"].get("artifact_graph") or {}
        pa = art.get("arena_head_bytes", art.get("arena_bytes"))
        h, t, tot = tf.get("arena_head_bytes"), tf.get("arena_tail_bytes"), tf.get("arena_total_bytes")
        print(
            f"| {r['model']} | {p} | {pa} ({_pct(h, pa)}) | {h} | {_pct(h, ph)} | {t} | {tot} | "
            f"{_pct(tot, p)} | "
            f"{r['measure'].get('tflm_min_arena_bytes')} |"
        )
    print("\n## Predicted vs actual weight bytes")
    print("| model | backend | predicted (flash model) | in artifact, same form | error | artifact extras |")
    print("|---|---|---|---|---|---|")
    for r in ok:
        pred = r["manifest"]["prediction"]["flash"]["model_bytes"]
        wb = r["manifest"]["weights"]
        act = wb["planned_form_bytes"]
        extras = ", ".join(
            f"{k} {v}"
            for k, v in wb["by_role"].items()
            if k in ("zero_points", "bias_qparams", "act_qparams", "bias_scales", "shared_buffers_saved")
            and v
        )
        print(f"| {r['model']} | {_label(r)} | {pred} | {act} | {_pct(act, pred)} | {extras} |")
    print("\n## Agreement")
    print(
        "| model | backend | reference | samples | top-1 agreement | cosine | TFLM vs LiteRT top-1 | "
        "TFLM vs LiteRT max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in ok:
        a = r["manifest"].get("agreement") or {}
        if not a:
            continue
        tv = r["measure"].get("tflm_vs_litert") or {}
        tflm = f"{100 * tv['top1_agreement']:.0f}% of {tv['n']}" if tv else "-"
        print(
            f"| {r['model']} | {_label(r)} | {a.get('reference')} | {a.get('n')} | "
            f"{100 * a.get('top1_agreement', 0):.1f}% | {a.get('cosine')} | {tflm} | "
            f"{tv.get('max_abs_diff', '-')} |"
        )
    untuned = {r["model"]: r for r in ok if r["backend"] == "tvm" and r.get("variant") == "untuned"}
    tuned = {r["model"]: r for r in ok if r["backend"] == "tvm" and r.get("variant", "").startswith("tuned")}
    ortr = {r["model"]: r for r in ok if r["backend"] == "onnxruntime"}
    if untuned or tuned:
        print(f"\n## TVM vs ONNX Runtime, host latency in one run (median ms, 1 thread, --bits {rows[0]['bits']})")
        print(
            "| model | ORT | TVM untuned | untuned / ORT | TVM tuned | tuned / ORT | trials (budget / measured) | "
            "tuning s (this run / all) | workload key | load (1 min) ORT / untuned / tuned |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for model in dict.fromkeys([*untuned, *tuned]):
            o_row, u_row, t_row = ortr.get(model, {}), untuned.get(model, {}), tuned.get(model, {})
            o, u, t = (_median(x) for x in (o_row, u_row, t_row))
            tu = ((t_row.get("manifest") or {}).get("backend_facts") or {}).get("tuning") or {}
            trials = f"{tu.get('trials_budget_total')} / {tu.get('trials_measured_total')}" if tu else "-"
            secs = f"{tu['tuning_s']} / {tu['tuning_s_total']}" + (" (reused)" if tu["reused"] else "") if tu else "-"
            load = " / ".join(str(x.get("load_avg_1min", "-")) for x in (o_row, u_row, t_row))
            print(
                f"| {model} | {o or '-'} | {u or '-'} | {_ratio(u, o)} | {t or '-'} | {_ratio(t, o)} | {trials} | "
                f"{secs} | {tu.get('workload_key', '-')} | {load} |"
            )
        print("\n## TVM artifacts")
        print("| model | variant | Relax planned B | constants B | agreement with ORT (max abs diff) | cross objects |")
        print("|---|---|---|---|---|---|")
        for r in [*untuned.values(), *tuned.values()]:
            facts = r["manifest"]["backend_facts"]
            plan = (facts.get("relax_memory_plan") or {}).get("planned_bytes")
            consts = (facts.get("relax_constants") or {}).get("bytes")
            a = r["manifest"].get("agreement") or {}
            agree = (
                f"top-1 {100 * a.get('top1_agreement', 0):.0f}% of {a.get('n')} ({a.get('max_abs_diff')})"
                if a
                else "-"
            )
            cross = facts.get("cross_compile") or {}
            objs = ", ".join(f"{k} {v} B" for k, v in (cross.get("objects") or {}).items()) or cross.get(
                "error", "-"
            )
            trip = (cross.get("target") or {}).get("mtriple", "")
            print(f"| {r['model']} | {r['variant']} | {plan} | {consts} | {agree} | {trip} {objs} |")
    errs = [r for r in rows if "error" in r]
    if errs:
        print("\n## Errors")
        for r in errs:
            print(f"- {r['model']} / {_label(r)}: {r['error']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--backends", default=DEFAULT_BACKENDS)
    ap.add_argument("--bits", default="w8a8")
    ap.add_argument("--plan", default=None, help="A plan.json instead of --bits (must match every model).")
    ap.add_argument("--device", default=None, help="Profile whose runtime settings shape the prediction.")
    ap.add_argument("--cross", default="raspberry-pi-4", help="Device the tvm backend cross-compiles for.")
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--samples", type=int, default=16, help="Calibration samples.")
    ap.add_argument("--check-samples", type=int, default=496, help="Agreement samples (photos).")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", default=None, help="Write the rows here (after every row).")
    ap.add_argument(
        "--tvm-tune-trials",
        type=int,
        default=0,
        help="Also compile the tvm backend tuned with MetaSchedule, at most N trials per model (0: untuned only).",
    )
    ap.add_argument("--tvm-tune-db", default=None, help="Tuning database folder (default: tap-edge's cache).")
    ap.add_argument("--tvm-skip-untuned", action="store_true", help="With --tvm-tune-trials: no untuned tvm row.")
    ap.add_argument("--vela-models", default=VELA_MODELS, help="The vela backend's models (default: %(default)s).")
    ap.add_argument("--vela-devices", default="*", help="Profiles (a pattern) whose Ethos-U runtimes the vela "
                                                        "backend targets (default: every one).")
    ap.add_argument("--calib", default="../shared/data/imagenet-sample",
                    help="Calibration images of the vela backend's image models (default: %(default)s).")
    args = ap.parse_args(argv)
    if args.tvm_tune_trials < 0:
        ap.error("--tvm-tune-trials must be 0 or more")
    rows: list[dict[str, Any]] = []
    backends = [b for b in args.backends.split(",") if b]
    if "vela" in backends:
        for model in [m for m in args.vela_models.split(",") if m]:
            t0 = time.perf_counter()
            print(f"[bench] {model} / vela ...", file=sys.stderr, flush=True)
            try:
                rows += bench_vela(model, args)
                status = "ok"
            except Exception as e:  # keep going: one failure must not lose the other rows
                rows.append({"model": model, "backend": "vela", "variant": "",
                             "error": f"{e.__class__.__name__}: {str(e)[:300]}",
                             "traceback": traceback.format_exc()[-2000:]})
                status = rows[-1]["error"]
            print(f"[bench] {model} / vela: {status} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    for model in [m for m in args.models.split(",") if m]:
        for backend in [b for b in backends if b != "vela"]:
            budgets: list[int | None] = [None]
            if backend == "tvm" and args.tvm_tune_trials:
                budgets = [args.tvm_tune_trials] if args.tvm_skip_untuned else [None, args.tvm_tune_trials]
            for tune_trials in budgets:
                name = f"{model} / {backend}" + (f" tuned ({tune_trials} trials)" if tune_trials else "")
                t0 = time.perf_counter()
                print(f"[bench] {name} ...", file=sys.stderr, flush=True)
                try:
                    row = bench_one(model, backend, args, tune_trials)
                except Exception as e:  # keep going: one failure must not lose the other rows
                    row = {
                        "model": model,
                        "backend": backend,
                        "variant": _variant(backend, tune_trials),
                        "error": f"{e.__class__.__name__}: {str(e)[:300]}",
                        "traceback": traceback.format_exc()[-2000:],
                    }
                row["seconds"] = round(time.perf_counter() - t0, 1)
                rows.append(row)
                print(f"[bench] {name}: {row.get('error', 'ok')} ({row['seconds']} s)", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    print_tables(rows)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

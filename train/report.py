"""`python -m train report`: the compression table, trained and measured in one process.

    result = run_report(ReportOptions(out_dir="reports/compression", docs="docs/benchmarks.md"))

Rows (each student starts from the trained teacher and is distilled from it): the float
teacher, a float control (the QAT recipe without quantization: the extra training alone),
int8 QAT, int4 QAT, 35%-pruned + distilled, pruned + distilled + int8 QAT, and for a composite
int8 of every stack after each int8 row. Columns: whole-answer accuracy, token accuracy, loss,
weight bytes, KV bytes per token, decode tokens/s. `projected_bytes` sizes the same recipes at
a full-size preset's shapes. The commands it runs are those of `training.compress`.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import autoglm_jax.checkpoint as ckpt
from autoglm_jax.config.quant import PruneConfig, QuantConfig
from autoglm_jax.training.compress import (
    CompressRecipe,
    calibration_batches,
    load_compress_recipe,
    run_export,
    run_prune,
    run_qat,
)
from autoglm_jax.training.loop import log as _log
from autoglm_jax.training.loop import run_distill, run_pretrain
from train.report_sizes import INT4, INT8, projected_bytes, stack_bytes

MEDIA_TASKS = ("image", "audio")


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """Sizes of the compression report (defaults: about 25 minutes on a quiet 2-core CPU)."""

    out_dir: str = "reports/compression"
    """Where report.md, report.json, report.png and the run directories go."""
    preset: str = "mini-mm"
    """Teacher architecture (a preset name); mini-mm's parameter shares mirror the 9B's."""
    tasks: tuple[str, ...] = ("image",)
    """Synthetic tasks (training/synthetic.py; image and audio need a glm4v/autoglm preset).
    Not audio by default: an audio step costs ~20x an image step on CPU (16 Whisper
    windows of 3,000 frames per batch; see docs/compression.md)."""
    init: str = "fan_in"
    """Random init of the teacher (`ag.init`): fan_in suits small models trained from scratch."""
    teacher_steps: int = 3000
    """Teacher steps (one warmup-cosine schedule); every student starts from the teacher."""
    qat_steps: int = 200
    """Steps of each QAT run (int8, int4, and the last row's int8 on the pruned model)."""
    recover_steps: int = 400
    """Distillation steps that recover the pruned model."""
    flops_reduction: float = 0.35
    seq_len: int = 48
    batch_size: int = 16
    lr: float = 3e-3
    """Teacher and recovery learning rate (QAT runs use lr / 6)."""
    max_len: int = 5
    """Longest string of the synthetic text tasks."""
    eval_batches: int = 64
    """Held-out batches (data seed 99) the accuracy and loss are averaged over."""
    decode_prompts: int = 8
    decode_tokens: int = 32
    seed: int = 0
    project_to: str = "autoglm-phone-9b"
    """Also size the same recipes at this preset's shapes (eval_shape, no training); "" skips."""
    docs: str = ""
    """Also publish the table into this markdown file (e.g. docs/benchmarks.md): between the
    `<!-- compression-report -->` markers (appended as a section if absent), with the chart
    copied beside it as compression-report.png."""


def _train_recipe(
    o: ReportOptions, run_dir: Path, steps: int, lr: float, seed: int, **over: Any
) -> CompressRecipe:
    media = any(t in MEDIA_TASKS for t in o.tasks)
    base = {
        "name": run_dir.name,
        "run_dir": str(run_dir),
        "steps": steps,
        "progress": False,
        "log_every": max(1, steps // 10),
        "seed": seed,
        "data": {
            "seq_len": o.seq_len,
            "batch_size": o.batch_size,
            "seed": seed,
            "synthetic_tasks": list(o.tasks),
            "synthetic_max_len": o.max_len,
            "mode": "pad" if media else "pack",
        },
        "optim": {"lr": lr, "warmup_steps": max(1, min(30, steps // 10)), "weight_decay": 0.0},
        "model": {"preset": o.preset, "seed": o.seed, "init": o.init},
        "checkpoint": {"every": 100_000, "export": True, "async_save": False},
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return load_compress_recipe(None, base)


def _evaluate(model: ckpt.Model, batches: list[dict[str, Any]]) -> dict[str, float]:
    from autoglm_jax.training import make_eval_step
    from autoglm_jax.training.step import put_batch

    f = make_eval_step(model.module)
    out = [jax.device_get(f(model.params, put_batch(b, None))) for b in batches]
    return {k: float(np.mean([x[k] for x in out])) for k in out[0]}


def _decode_prompts(o: ReportOptions, model: ckpt.Model) -> list[Any]:
    """The first held-out questions of the task mix as chat prompts (media included), or
    random token prompts for a model without a tokenizer."""
    from autoglm_jax.training import synthetic

    if model.tokenizer is None:
        rng = np.random.RandomState(7)
        vocab = min(model.config.text.vocab_size, 400)
        return [list(map(int, rng.randint(10, vocab, 12))) for _ in range(o.decode_prompts)]
    samples = [synthetic.sample(99, i, o.tasks, o.max_len) for i in range(o.decode_prompts)]
    return [{"messages": [dict(s.messages[0])]} for s in samples]


def _decode_speed(model: ckpt.Model, o: ReportOptions) -> tuple[float, int]:
    """(decode tokens/s of the engine, greedy, after a warm-up batch; KV bytes per token)."""
    from autoglm_jax.engine import Engine, EngineConfig, SamplingParams

    cfg = EngineConfig(
        max_num_seqs=o.decode_prompts,
        max_num_batched_tokens=256,
        page_size=8,
        max_model_len=128,
        num_pages=16 * o.decode_prompts + 1,
        enable_prefix_caching=False,
    )
    engine = Engine(model, cfg)
    prompts = _decode_prompts(o, model)
    greedy = SamplingParams(max_tokens=o.decode_tokens, temperature=0.0, ignore_eos=True)
    engine.generate(prompts, greedy)  # compile every shape once
    t0 = time.perf_counter()
    outs = engine.generate(prompts, greedy)
    dt = time.perf_counter() - t0
    return sum(len(x.token_ids) for x in outs) / dt, engine.kv_bytes_per_token


def run_report(o: ReportOptions = ReportOptions()) -> dict[str, Any]:
    """Teacher (float), int8 QAT, int4 QAT, pruned + distilled, pruned + distilled + int8 QAT,
    on the synthetic tasks `o.tasks`; writes report.{md,json,png} to o.out_dir.

    Every student starts from the teacher and is distilled from it. A float control row
    trains the teacher with the QAT recipe, quantization left out: the extra training alone,
    so a student that beats the teacher is not read as compression helping."""
    from autoglm_jax.compress import decoder_flops
    from autoglm_jax.quant import weight_bytes

    t_start = time.perf_counter()
    out = Path(o.out_dir)
    if out.exists() and any(out.glob("*/checkpoints")):
        raise FileExistsError(f"{out} holds earlier report runs; pick another --out-dir")
    out.mkdir(parents=True, exist_ok=True)
    int8, int4 = INT8, INT4
    int8_all = int8.replace(scope="all")  # the encoders and CGA fusion too
    media = any(t in MEDIA_TASKS for t in o.tasks)  # a composite: its encoders can be int8

    _log(f"report: teacher ({o.preset}) {o.teacher_steps} steps")
    teacher_r = _train_recipe(o, out / "teacher", o.teacher_steps, o.lr, 0)
    teacher = run_pretrain(teacher_r).model
    tokenizer = teacher.tokenizer
    held = _train_recipe(o, out / "eval", 1, 1e-3, 99)
    eval_batches = calibration_batches(held, tokenizer, o.eval_batches, teacher.config)
    tdir = Path(teacher_r.run_dir) / "model"
    distill = {"teacher": str(tdir), "alpha": 0.7, "temperature": 2.0}

    def student(name: str, init: Path, seed: int) -> CompressRecipe:
        return _train_recipe(
            o,
            out / name,
            o.qat_steps,
            o.lr / 6,
            seed,
            model={"init_from": str(init)},
            distill=distill,
        )

    def qat(name: str, quant: QuantConfig, init: Path, seed: int) -> tuple[Path, ckpt.Model]:
        _log(f"report: {name}: QAT {o.qat_steps} steps from {init}")
        r = student(name, init, seed)
        res = run_qat(CompressRecipe.of(r, quant=quant), teacher=teacher)
        exported = run_export(
            res.run_dir / "model", quant.weights, recipe=CompressRecipe.of(r, quant=quant)
        )
        return exported, res.model

    rows_spec: list[tuple[str, Path, ckpt.Model | None]] = [("teacher (float)", tdir, None)]
    _log(f"report: float control: the QAT recipe without quantization, {o.qat_steps} steps")
    control = run_distill(student("control", tdir, 8), teacher=teacher)
    rows_spec.append(("teacher + QAT recipe in float (control)", control.run_dir / "model", None))
    d8, q8 = qat("qat-int8", int8, tdir, 1)
    rows_spec.append(("int8 QAT", d8, q8))
    if media:
        d8a, q8a = qat("qat-int8-all", int8_all, tdir, 6)
        rows_spec.append(("int8 QAT, every stack", d8a, q8a))
    d4, q4 = qat("qat-int4", int4, tdir, 2)
    rows_spec.append(("int4 QAT", d4, q4))

    _log(f"report: prune {o.flops_reduction:.0%} + distill {o.recover_steps} steps")
    pr = _train_recipe(o, out / "pruned", o.recover_steps, o.lr, 3, distill=distill)
    pr = CompressRecipe.of(pr, prune=PruneConfig(flops_reduction=o.flops_reduction))
    pres = run_prune(pr, model=teacher, recover=True)
    pdir = pres.recovered.run_dir / "model"
    rows_spec.append((f"{o.flops_reduction:.0%}-pruned + distilled", pdir, None))
    dp8, qp8 = qat("pruned-int8", int8, pdir, 4)
    rows_spec.append((f"{o.flops_reduction:.0%}-pruned + distilled + int8 QAT", dp8, qp8))
    if media:
        dpa, qpa = qat("pruned-int8-all", int8_all, pdir, 7)
        rows_spec.append(
            (f"{o.flops_reduction:.0%}-pruned + distilled + int8 QAT, every stack", dpa, qpa)
        )

    rows = []
    teacher_bf16 = None
    for name, path, qat_model_ in rows_spec:
        _log(f"report: measuring {name} ({path})")
        m32 = ckpt.load(path)
        ev = _evaluate(m32, eval_batches)
        m16 = ckpt.load(path, dtype=jnp.bfloat16)
        wb = weight_bytes(m16)
        if teacher_bf16 is None:
            teacher_bf16 = wb["bf16"]
        tps, kv = _decode_speed(m16, o)
        row = {
            "model": name,
            "path": str(path),
            "accuracy": ev["seq_accuracy"],
            "token_accuracy": ev["accuracy"],
            "loss": ev["ce"],
            "weight_bytes": wb["total"],
            "weight_share": wb["total"] / teacher_bf16,
            "kv_bytes_per_token": kv,
            "decode_tokens_per_s": tps,
            "decoder_flops": decoder_flops(m32.config.text),
            "stack_bytes": stack_bytes(m16.params),
        }
        if qat_model_ is not None:  # the export changes storage, not numbers: check it here
            qe = _evaluate(qat_model_, eval_batches)
            row["qat_forward_accuracy"] = qe["seq_accuracy"]
            row["qat_forward_loss"] = qe["ce"]
        rows.append(row)
    result = {
        "options": dataclasses.asdict(o),
        "rows": rows,
        "prune": {"target": o.flops_reduction, "achieved": pres.report.reduction},
        "teacher_bf16_bytes": teacher_bf16,
        "eval_answers": sum(int(np.sum(b["segment_ids"][:, 0] > 0)) for b in eval_batches),
        "machine": f"{platform.machine()} {platform.system()}, {jax.default_backend()} "
        f"({jax.device_count()} device), {_cpus()} CPUs",
        "seconds": time.perf_counter() - t_start,
        "date": time.strftime("%Y-%m-%d"),
    }
    first = rows[0]

    control = rows[1]

    def goal(row: dict[str, Any]) -> dict[str, Any]:
        gap = 100 * (first["accuracy"] - row["accuracy"])
        return {
            "model": row["model"],
            "accuracy_gap_points": gap,
            "gap_to_control_points": 100 * (control["accuracy"] - row["accuracy"]),
            "weight_share": row["weight_share"],
            "met": bool(gap <= 1.2 and row["weight_share"] <= 0.35),
        }

    # the last row is "pruned + distilled + int8 QAT": decoder-only and, for a
    # composite, every stack
    result["goals"] = [goal(r) for r in rows if "pruned + distilled + int8" in r["model"]]
    result["goal"] = result["goals"][-1]
    if o.project_to:
        result["projection"] = projected_bytes(o.project_to, o.flops_reduction)
    markdown = report_markdown(result)
    (out / "report.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(markdown)
    _chart(result, out / "report.png")
    _log(f"report: wrote {out}/report.md, report.json, report.png in {result['seconds']:.0f} s")
    if o.docs:  # straight from this run's figures: nothing is read back from disk
        _publish(markdown, out / "report.png", o.docs)
    return result


DOCS_BEGIN, DOCS_END = "<!-- compression-report:begin -->", "<!-- compression-report:end -->"


def _publish(table: str, chart: Path, docs: str | Path) -> Path:
    """Put this run's table into the markdown file `docs` between the DOCS_BEGIN / DOCS_END
    markers (a new section at the end if they are absent) and copy its chart beside it as
    compression-report.png. The file is replaced atomically. Only run_report calls this, with
    the figures it has just measured: there is no way to publish edited numbers."""
    import os
    import shutil

    path = Path(docs)
    block = f"{DOCS_BEGIN}\n{table}\n![compression chart](compression-report.png)\n{DOCS_END}"
    text = path.read_text() if path.exists() else ""
    if DOCS_BEGIN in text and DOCS_END in text:
        head, rest = text.split(DOCS_BEGIN, 1)
        text = head + block + rest.split(DOCS_END, 1)[1]
    else:
        text = (
            text.rstrip("\n")
            + ("\n\n" if text else "")
            + "## Compression table (`python -m train report`)\n\n"
            + block
            + "\n"
        )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    if chart.exists():
        shutil.copyfile(chart, path.parent / "compression-report.png")
    _log(f"report: published the table into {path}")
    return path


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def report_markdown(r: dict[str, Any]) -> str:
    o = r["options"]
    media = [t for t in o["tasks"] if t in MEDIA_TASKS]
    kind = "multimodal" if media else "text"
    lines = [
        f"Compression table ({r['date']}, {r['machine']}; {r['seconds']:.0f} s). Task: the "
        f"synthetic **{kind}** task ({', '.join(o['tasks'])}; `training/synthetic.py`). "
        f"Teacher: the `{o['preset']}` preset ({o['init']} init) trained {o['teacher_steps']} "
        f"steps. Every student starts from the teacher and is distilled from it (alpha 0.7, "
        f"T 2); the float control row is the teacher trained with the QAT recipe (same steps, "
        f"learning rate and distillation) but no quantization, the extra training alone. "
        f"Batches: "
        f"{o['batch_size']} x {o['seq_len']} tokens. QAT: {o['qat_steps']} steps; pruned: "
        f"{r['prune']['achieved']:.1%} of decoder FLOPs removed (target "
        f"{r['prune']['target']:.0%}), then {o['recover_steps']} distillation steps, then "
        f"(last row) {o['qat_steps']} int8 QAT steps. int8: every decoder matmul, lm_head "
        f'included, one scale per output channel ("every stack": the vision tower, Whisper '
        f'and CGA fusion matmuls too, `QuantConfig(scope="all")`); int4: groups of 32, '
        f"lm_head int8.",
        "",
        f"Accuracy = the whole answer right (teacher-forced argmax on every answer token), "
        f"over {r['eval_answers']} held-out questions ({o['eval_batches']} batches, data seed "
        f"99); token acc. = per answer token; loss = CE on answer tokens; float32 forward of "
        f"the saved (exported) checkpoints. Weight bytes: params as loaded with "
        f"`dtype=bfloat16` (integer kernels stay integer; scales, embeddings, norms and float "
        f"encoders bf16). Decode: `Engine.generate`, greedy, {o['decode_prompts']} held-out "
        f"questions (with their media) x {o['decode_tokens']} tokens, bf16, after a warm-up "
        f"batch.",
        "",
        "| model | accuracy | token acc. | loss | weight bytes | / teacher bf16 "
        "| KV bytes/token | decode tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['model']} | {row['accuracy']:.4f} | {row['token_accuracy']:.4f} | "
            f"{row['loss']:.4f} | {row['weight_bytes']:,} | {row['weight_share']:.3f} | "
            f"{row['kv_bytes_per_token']:,} | {row['decode_tokens_per_s']:.1f} |"
        )
    first, last = r["rows"][0], r["rows"][-1]
    stacks = list(first["stack_bytes"])
    lines += [
        "",
        "Where the bytes are (bf16 load), teacher and last row:",
        "",
        "| stack | teacher | last row |",
        "|---|---|---|",
    ]
    for k in stacks:
        a, b = first["stack_bytes"][k], last["stack_bytes"].get(k, 0)
        lines.append(f"| {k} | {a:,} | {b:,} ({b / max(a, 1):.2f}x) |")
    proj = r.get("projection")
    if proj:
        lines += [
            "",
            f"The same recipes at `{proj['preset']}`'s shapes (`jax.eval_shape`, bf16 "
            f"load, no training; float = {proj['bf16_bytes']:,} bytes):",
            "",
            "| variant | bytes | / float bf16 |",
            "|---|---|---|",
        ]
        lines += [f"| {p['model']} | {p['bytes']:,} | {p['share']:.3f} |" for p in proj["rows"]]
    lines += [
        "",
        "Goal (pruned + distilled + int8 QAT within 1.2 accuracy points of the teacher "
        "at <= 35% of its bf16 weight bytes):",
        "",
    ]
    for g in r.get("goals", [r["goal"]]):
        lines.append(
            f"- {g['model']}: gap {g['accuracy_gap_points']:+.2f} points "
            f"({g['gap_to_control_points']:+.2f} to the float control), "
            f"{g['weight_share']:.1%} of the bytes: "
            f"**{'met' if g['met'] else 'not met'}**."
        )
    return "\n".join(lines) + "\n"


def _chart(r: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("report: matplotlib not installed; no chart")
        return
    rows = r["rows"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        ax.scatter(100 * row["weight_share"], 100 * row["accuracy"], s=60)
        ax.annotate(
            row["model"],
            (100 * row["weight_share"], 100 * row["accuracy"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    t = rows[0]
    ax.axhline(100 * t["accuracy"] - 1.2, ls="--", lw=0.8, c="gray")
    ax.axvline(35, ls="--", lw=0.8, c="gray")
    ax.set_xlabel("weight bytes, % of the teacher's bf16 bytes")
    ax.set_ylabel("answers right, %")
    kind = "multimodal" if any(t in MEDIA_TASKS for t in r["options"]["tasks"]) else "text"
    ax.set_title(
        f"Compression on the synthetic {kind} task\n(goal: upper left of the dashes)", fontsize=10
    )
    ax.set_xlim(0, 135)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

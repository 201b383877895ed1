"""Distillation beats CE-only training of the same student, measured on held-out data.

The regime is data-limited on purpose: the student sees a fixed set of 128 synthetic examples
for the same number of steps either way. With CE alone it fits those answers; with the
teacher's distributions over the same inputs it learns more of the teacher's function: its
KL to the teacher and its held-out cross-entropy fall well below CE-only's. (On an unlimited
stream the gain is small at this scale; docs/training.md has both numbers.)
"""

import jax
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.training import (
    load_recipe,
    make_dataset,
    make_eval_step,
    run_distill,
    run_pretrain,
)
from autoglm_jax.training.step import put_batch

from . import np_init

TASKS = ["count", "copy", "reverse"]


def _recipe(run_dir, steps, **over):
    base = {
        "run_dir": str(run_dir),
        "steps": steps,
        "progress": False,
        "data": {"seq_len": 64, "batch_size": 16, "synthetic_tasks": TASKS, "synthetic_max_len": 5},
        "optim": {"lr": 3e-3, "warmup_steps": 30, "weight_decay": 0.01},
        "checkpoint": {"every": 10_000, "export": False, "async_save": False},
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return load_recipe(None, base)


def evaluate(f, params, teacher, batches):
    out = [jax.device_get(f(params, b, teacher.params)) for b in batches]
    return {k: float(np.mean([o[k] for o in out])) for k in out[0]}


@pytest.mark.slow
def test_distilled_student_beats_ce_only(tmp_path):
    cfg = ag.load_config("tiny")
    teacher = run_pretrain(
        _recipe(tmp_path / "teacher", 200, optim={"lr": 5e-3}), model=np_init(cfg, 0)
    ).model
    held_out = _recipe(tmp_path / "x", 1, data={"seed": 99, "prefetch": 0})
    it = iter(make_dataset(held_out.data, teacher.tokenizer)[0])
    batches = [put_batch(next(it), None) for _ in range(8)]
    t_eval = evaluate(make_eval_step(teacher.module), teacher.params, teacher, batches)

    student = np_init(cfg.replace(text=cfg.text.replace(num_layers=2)), seed=1)
    small = {"seed": 1, "synthetic_size": 128}
    ce = run_pretrain(_recipe(tmp_path / "ce", 100, data=small), model=student).model
    kd = run_distill(
        _recipe(tmp_path / "kd", 100, data=small, distill={"alpha": 0.8, "temperature": 1.0}),
        teacher=teacher,
        model=student,
    ).model
    f = make_eval_step(student.module, teacher.module)  # one compile for both students
    ce_eval, kd_eval = (evaluate(f, m.params, teacher, batches) for m in (ce, kd))
    print(f"\nteacher {t_eval}\nce-only {ce_eval}\ndistilled {kd_eval}")
    assert t_eval["accuracy"] > ce_eval["accuracy"] + 0.1  # the teacher knows more
    assert kd_eval["kl"] < 0.85 * ce_eval["kl"]  # closer to the teacher: 0.57 vs 0.82
    assert kd_eval["ce"] < 0.95 * ce_eval["ce"]  # and better on held-out answers: 1.23 vs 1.43
    # Token accuracy gains only 0.8 to 1.9 points here, and which depends on float rounding
    # (XLA's CPU optimisation level moves it; docs/training.md): it must not drop, no more.
    assert kd_eval["accuracy"] >= ce_eval["accuracy"]

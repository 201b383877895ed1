"""`python -m train` end to end in subprocesses, recipes, and resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.config import ConfigError
from autoglm_jax.training import load_recipe, run_pretrain
from autoglm_jax.training import metrics as M

ROOT = Path(__file__).resolve().parents[2]
# The pretrain/distill recipes this package owns (the compression recipes beside them carry
# [quant]/[prune] tables that tests/quant checks).
RECIPES = sorted((ROOT / "configs" / "recipes").glob("tiny-*.toml"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    # Subprocesses share compiled programs through JAX's persistent cache (same executables,
    # so results are unchanged; only compile time is saved).
    e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    e["PYTHONPATH"] = str(ROOT)
    return e


def _train(args, env, **kw):
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        **kw,
    )


def test_phone_agent_recipes_parse_and_validate():
    """tools/build-phone-agent's recipes: no test runs the build, so a broken field would only
    show an hour into it."""
    from autoglm_jax.training.compress import load_compress_recipe

    recipes = sorted((ROOT / "configs" / "recipes").glob("phone-agent*.toml"))
    names = {p.stem for p in recipes}
    assert {"phone-agent", "phone-agent-vision", "phone-agent-seeing"} <= names
    for kind in ("prune", "int8"):
        assert {f"phone-agent-{kind}", f"phone-agent-seeing-{kind}"} <= names
    for p in recipes:
        recipe = load_compress_recipe(p).train_recipe().validate()
        for family in ("phone-agent-seeing", "phone-agent-placed"):
            if p.stem.startswith(family):  # the pretrained tower stays frozen
                assert recipe.optim.trainable == ("language_model/*",), p
                assert recipe.distill.teacher in ("", f"checkpoints/{family}/model"), p


SMALL = [
    "--data.seq-len",
    "32",
    "--data.batch-size",
    "4",
    "--log-every",
    "1",
    "--optim.warmup-steps",
    "1",
]


def test_recipes_parse_and_errors_name_the_file(tmp_path):
    assert {p.name for p in RECIPES} == {
        "tiny-pretrain.toml",
        "tiny-distill.toml",
        "tiny-mm-cga.toml",
    }
    for p in RECIPES:
        load_recipe(p)
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = 3\n[optim]\nlearning_rate = 1.0\n")
    with pytest.raises(ConfigError, match=rf"{bad}.optim: unknown field\(s\) \['learning_rate'\]"):
        load_recipe(bad)
    bad.write_text("[data]\nmode = 'bucket'\n")
    with pytest.raises(ConfigError, match="data.mode.*'bucket' is not one of"):
        load_recipe(bad)
    r = load_recipe(RECIPES[0], {"optim": {"lr": 0.5}, "mesh": {"fsdp": 2}})
    assert r.optim.lr == 0.5 and r.mesh.fsdp == 2 and r.name == load_recipe(RECIPES[0]).name


def _main(args, capsys):
    from train.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_help_is_readable(capsys):
    code, out, _ = _main(["--help"], capsys)
    assert code == 0 and "pretrain" in out and "distill" in out
    code, out, _ = _main(["distill", "--help"], capsys)
    assert code == 0
    for text in (
        "--recipe",
        "--optim.lr",
        "Peak learning rate",
        "--distill.layer-map",
        "--resume",
        "--mesh.rules",
    ):
        assert text in out, text
    code, _, _ = _main(["pretrain", "--recipe", "no/such.toml"], capsys)
    assert code == "error: no/such.toml: recipe file not found"


def test_pretrain_then_distill_end_to_end(tmp_path, env):
    run = tmp_path / "pre"
    p = _train(
        [
            "pretrain",
            "--recipe",
            "configs/recipes/tiny-pretrain.toml",
            "--steps",
            "3",
            "--run-dir",
            str(run),
            "--checkpoint.every",
            "2",
            *SMALL,
        ],
        env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "params 161,400" in p.stderr and "est. FLOPs/step" in p.stderr
    assert sorted(x.name for x in (run / "checkpoints").iterdir()) == ["2", "3"]
    records = M.read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["tokens"] > 0 for r in records)
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    model = ag.load(run / "model")
    assert model.tokenizer is not None and model.config.text.num_layers == 3

    # the exported model is a teacher for `distill`
    d = _train(
        [
            "distill",
            "--recipe",
            "configs/recipes/tiny-distill.toml",
            "--steps",
            "2",
            "--run-dir",
            str(tmp_path / "dist"),
            "--distill.teacher",
            str(run / "model"),
            "--checkpoint.no-export",
            *SMALL,
        ],
        env,
        timeout=600,
    )
    assert d.returncode == 0, d.stderr[-3000:]
    assert "teacher forward" in d.stderr
    rec = M.read_jsonl(tmp_path / "dist" / "metrics.jsonl")
    assert [r["step"] for r in rec] == [1, 2] and all(r["kl"] > 0 for r in rec)


def test_multimodal_cga_recipe_end_to_end(tmp_path, env):
    """The tiny-mm CGA recipe with images added: audio and image batches through the loop."""
    recipe = load_recipe(ROOT / "configs" / "recipes" / "tiny-mm-cga.toml")
    assert recipe.optim.train == "cga" and recipe.data.synthetic_tasks == ("audio",)
    run = tmp_path / "mm"
    p = _train(
        [
            "pretrain",
            "--recipe",
            "configs/recipes/tiny-mm-cga.toml",
            "--steps",
            "3",
            "--run-dir",
            str(run),
            "--checkpoint.every",
            "2",
            "--log-every",
            "1",
            "--data.synthetic-tasks",
            "audio",
            "image",
            "--data.batch-size",
            "2",
            "--checkpoint.no-export",
        ],
        env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    # trainable = the fusion: projectors 13,066 + CGA blocks 30,344 (docs/multimodal.md)
    assert "params 468,862 | trainable 43,410" in p.stderr
    assert "2 image slot(s), 2 audio window(s) per micro-batch" in p.stderr
    assert sorted(x.name for x in (run / "checkpoints").iterdir()) == ["2", "3"]
    records = M.read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["finite"] and r["tokens"] > 0 for r in records)
    # the vision tower's health on batches with images (it is frozen here: as initialised)
    spreads = [r["image_spread"] for r in records if "image_spread" in r]
    assert spreads and all(s > 0.1 for s in spreads) and "hardly depends" not in p.stderr
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, env):
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text(
        "steps = 20\nlog_every = 1\nprogress = false\n"
        "[data]\nseq_len = 32\nbatch_size = 4\n"
        "[optim]\nlr = 3e-3\nwarmup_steps = 2\n"
        "[model]\nnum_layers = 2\n"
        "[checkpoint]\nevery = 4\nkeep = 2\n"
    )
    # the uninterrupted run, in this process
    ref = run_pretrain(load_recipe(recipe_file, {"run_dir": str(tmp_path / "ref")}))

    run = tmp_path / "run"
    args = ["pretrain", "--recipe", str(recipe_file), "--run-dir", str(run)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(r["step"] >= 12 for r in M.read_jsonl(metrics)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()
    proc.send_signal(signal.SIGKILL)  # during or right after the step-12 save
    proc.wait()
    listing = sorted(p.name for p in (run / "checkpoints").iterdir())
    done = sorted(int(p) for p in listing if p.isdigit())
    # the latest finished save; a save still in flight (tmp dir) must not count
    assert done and done[-1] in (4, 8, 12), listing
    assert max(r["step"] for r in M.read_jsonl(metrics)) >= 12

    r = _train([*args, "--resume"], env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints'}/{done[-1]}" in r.stderr
    assert not [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]
    print("checkpoints at the kill:", listing)
    got = M.read_jsonl(metrics)
    assert [x["step"] for x in got] == list(range(1, 21))
    # exact on CPU: same program, same data order, restored bits
    assert [x["loss"] for x in got] == [h["loss"] for h in ref.history]
    final = ag.load(run / "model")
    for a, b in zip(jax.tree.leaves(final.params), jax.tree.leaves(ref.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

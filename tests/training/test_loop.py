"""The loop: exact resume from Orbax checkpoints, interrupted saves, the non-finite stop, and
the feedback files (metrics.jsonl, TensorBoard events, loss.png, progress)."""

import io
import json
import shutil
import struct
import sys

import jax
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer
from autoglm_jax.training import NonFiniteError, load_recipe, run_pretrain
from autoglm_jax.training import metrics as M
from autoglm_jax.training.data import make_dataset
from autoglm_jax.training.loop import _checkpoint_manager, restore_checkpoint

from . import np_init


def _recipe(run_dir, **over):
    base = {
        "run_dir": str(run_dir),
        "steps": 8,
        "progress": False,
        "data": {"seq_len": 32, "batch_size": 4, "prefetch": 2},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "model": {"num_layers": 1},
        "checkpoint": {"every": 4, "keep": 3, "export": False},
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return load_recipe(None, base)


@pytest.fixture(scope="module")
def one():
    cfg = ag.load_config("tiny")
    return np_init(cfg.replace(text=cfg.text.replace(num_layers=1)), seed=0)


def test_resume_is_exact_and_skips_an_interrupted_save(tmp_path, one):
    recipe = _recipe(tmp_path / "run")
    full = run_pretrain(recipe, model=one)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["4", "8"]
    # What a save killed half-way leaves: Orbax's tmp dir (renamed to "8" only when complete).
    shutil.rmtree(ckpts / "8")
    junk = ckpts / "8.orbax-checkpoint-tmp-1700000000000000"
    (junk / "state").mkdir(parents=True)
    (junk / "state" / "garbage").write_bytes(b"\0" * 100)

    resumed = run_pretrain(recipe, model=one, resume=True)
    assert resumed.start_step == 4 and not junk.exists()
    assert [h["step"] for h in resumed.history] == [5, 6, 7, 8]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history[4:]]
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(full.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    records = M.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["loss"] for r in records] == [h["loss"] for h in full.history]

    # A checkpoint holds the state, each process's data iterator position (Grain's file per
    # process) and the recipe + model config.
    saved = json.loads((ckpts / "8" / "data_iterator" / "process_0-of-1.json").read_text())
    it = iter(make_dataset(recipe.data, Tokenizer.from_dir(TINY_TOKENIZER_DIR))[0])
    assert it.get_state() != saved
    mngr = _checkpoint_manager(recipe)
    state, meta = restore_checkpoint(
        mngr, 8, resumed.state, jax.tree.map(lambda x: x.sharding, resumed.state), it
    )
    mngr.close()
    assert int(state.step) == 8 and it.get_state() == saved and meta["step"] == 8
    assert meta["recipe"]["steps"] == 8 and meta["model_config"]["text"]["num_layers"] == 1
    assert state.rng.shape == (2,) and not np.array_equal(state.rng, full.state.rng * 0)

    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        run_pretrain(recipe, model=one)


def test_nonfinite_steps_are_skipped_then_stop_the_run(tmp_path, one):
    bad = jax.tree.map(np.asarray, one.params)
    bad["norm"]["scale"] = np.full_like(bad["norm"]["scale"], np.nan)
    model = ag.Model(one.config, bad, one.module)
    recipe = _recipe(tmp_path / "run", optim={"max_nonfinite": 3})
    with pytest.raises(NonFiniteError, match="3 consecutive non-finite steps"):
        run_pretrain(recipe, model=model)
    records = M.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [(r["step"], r["finite"]) for r in records] == [(1, False), (2, False), (3, False)]
    assert not (tmp_path / "run" / "checkpoints" / "4").exists()


# --- feedback files ---------------------------------------------------------------------------


def _event_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="tfev")
    ev = fdp.message_type.add(name="Event")
    ev.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    ev.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    ev.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    ev.field.add(
        name="summary",
        number=5,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_OPTIONAL,
        type_name=".tfev.Summary",
    )
    summary = fdp.message_type.add(name="Summary")
    summary.field.add(
        name="value",
        number=1,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_REPEATED,
        type_name=".tfev.Summary.Value",
    )
    value = summary.nested_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tfev.Event"))


def test_crc32c_and_tfevents_decode_with_protobuf(tmp_path):
    assert M.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert M.crc32c(b"") == 0
    w = M.MetricsWriter(tmp_path)
    w.write(1, {"loss": 2.5, "lr": 1e-3, "finite": True})
    w.write(2, {"loss": 1.25, "lr": 2e-3, "finite": True})
    w.close()
    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    Event = _event_class()
    events = [Event.FromString(r) for r in M.read_records(files[0])]
    assert events[0].file_version == "brain.Event:2"
    scalars = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
    assert scalars[(1, "train/loss")] == 2.5 and scalars[(2, "train/loss")] == 1.25
    assert scalars[(2, "train/lr")] == pytest.approx(2e-3)
    raw = bytearray(files[0].read_bytes())
    raw[-1] ^= 1
    files[0].write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="bad data CRC"):
        M.read_records(files[0])
    assert [r["loss"] for r in M.read_jsonl(tmp_path / "metrics.jsonl")] == [2.5, 1.25]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_loss_png_with_matplotlib_and_with_pillow(tmp_path, monkeypatch):
    records = [{"step": i, "loss": 5.0 / i, "ce": 4.0 / i} for i in range(1, 30)]
    # One panel per series (loss and ce would otherwise draw over each other).
    assert _png_size(M.plot_losses(records, tmp_path / "a.png")) == (700, 500)
    assert _png_size(M.plot_losses(records[:3], tmp_path / "c.png", keys=("loss",))) == (700, 280)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails: Pillow draws it
    out = M.plot_losses(records, tmp_path / "b.png")
    assert _png_size(out) == (700, 420)
    from PIL import Image

    img = np.asarray(Image.open(out).convert("RGB"))
    assert (img != 255).any(axis=-1).mean() > 0.01  # something was drawn


def test_progress_lines_on_a_pipe():
    out = io.StringIO()
    p = M.Progress(total=20, stream=out)
    for s in range(1, 21):
        p.update(s, loss=1.0 / s, tokens=100)
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 12 and lines[-1].startswith("step 20/20 [")
    assert "tok/s" in lines[-1] and "ETA 0:00:00" in lines[-1]


def test_resume_refuses_a_changed_model_or_data_recipe(tmp_path, capsys):
    """--resume compares the run's recipe with the checkpoint's: model or data changes are
    refused with the differing fields; an optimizer change goes on with a warning."""
    from autoglm_jax.config import ConfigError

    run = tmp_path / "run"
    run_pretrain(_recipe(run, steps=4))
    with pytest.raises(
        ConfigError,
        match=r"model\.ffw_dim: checkpoint None, now 64.*"
        r"model config\.text\.ffw_dim",
    ):
        run_pretrain(_recipe(run, steps=8, model={"ffw_dim": 64}), resume=True)
    with pytest.raises(ConfigError, match=r"data\.seq_len: checkpoint 32, now 48"):
        run_pretrain(_recipe(run, steps=8, data={"seq_len": 48}), resume=True)
    capsys.readouterr()
    resumed = run_pretrain(_recipe(run, steps=6, optim={"lr": 1e-3}), resume=True)
    assert resumed.start_step == 4
    assert (
        "warning: resuming with changed settings: optim.lr: checkpoint 0.003, now 0.001"
        in capsys.readouterr().err
    )

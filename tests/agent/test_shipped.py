"""The model shipped in the package (autoglm-phone-sim): loadable by name, int8, small, with
the system prompt it was trained with, and the README's first command runs it."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from PIL import Image

import autoglm_jax as ag
from autoglm_jax.agent.loop import COMPACT_SYSTEM_PROMPT, SYSTEM_PROMPT_FILE
from autoglm_jax.checkpoint import shipped
from infer.flags import ModelFlags, load_model

NAME = "autoglm-phone-sim"
ROOT = Path(__file__).resolve().parents[2]


def test_shipped_model_loads_by_name_and_is_int8():
    directory = shipped.shipped_model_dir(NAME)
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert size <= 30 * 2**20  # the ceiling for what ships inside the package
    assert (directory / SYSTEM_PROMPT_FILE).read_text().strip() == COMPACT_SYSTEM_PROMPT
    assert (directory / "MODEL_CARD.md").is_file()
    m = ag.load(NAME)
    assert m.config.model_type == "glm4v" and m.tokenizer is not None and not m.random_init
    leaves = jax.tree_util.tree_leaves_with_path(m.params)
    int8 = {jax.tree_util.keystr(p).split("]")[0] for p, x in leaves if x.dtype == jnp.int8}
    assert int8 == {"['language_model'", "['visual'"}  # every stack's matmuls are integer


def test_unknown_and_missing_shipped_models(monkeypatch, tmp_path):
    assert shipped.shipped_model_dir("tiny") is None
    monkeypatch.setitem(shipped.SHIPPED_MODELS, "gone", "no_such_folder")
    with pytest.raises(FileNotFoundError, match="shipped model 'gone': .*no_such_folder"):
        shipped.shipped_model_dir("gone")
    with pytest.raises(SystemExit, match="--model: shipped model 'gone'"):
        load_model(ModelFlags(model="gone", compilation_cache_dir=""))


def test_auto_prompt_of_the_shipped_model_is_the_one_it_was_trained_with():
    from infer.agent import AgentLoopFlags

    # by name, as every command's default --model gives it, not only by path
    assert AgentLoopFlags().config(NAME).system_prompt == COMPACT_SYSTEM_PROMPT
    assert AgentLoopFlags().config(str(shipped.shipped_model_dir(NAME))).system_prompt == (
        COMPACT_SYSTEM_PROMPT
    )


def test_commands_default_to_the_shipped_model():
    from infer.agent import AgentArgs, AgentEvalArgs
    from infer.generate import ChatArgs, GenerateArgs
    from infer.serve import ServeArgs

    for args in (AgentArgs(), AgentEvalArgs(), GenerateArgs(), ChatArgs(), ServeArgs()):
        assert args.model.model == NAME


@pytest.mark.slow  # ~20 s: the README's first command, minus the install
def test_first_command_runs_the_shipped_agent(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "infer", "agent", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "autoglm_phone_sim" in proc.stderr and "RANDOM" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("task heldout/0: ") and lines[-1] in ("success", "failure")
    steps = sum(line.startswith("step ") for line in lines)
    assert steps >= 1 and len(list(tmp_path.glob("step-*.png"))) == steps
    assert Image.open(tmp_path / "episode.gif").n_frames == steps

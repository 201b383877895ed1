"""The offline phone agent: oracle training data the trainer reads, `python -m infer agent` and
`agent-eval` with an oracle and a garbage backend, and one real run on tiny-mm random weights."""

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import autoglm_jax as ag
from autoglm_jax.agent import make_task, oracle_episode, split_reply
from autoglm_jax.agent.actions import Finish, parse_action, to_pixels
from autoglm_jax.agent.episodes import PHONE_SIZE
from autoglm_jax.agent.evaluate import oracle_backend
from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer
from autoglm_jax.training import data as D
from autoglm_jax.training.media import MultimodalProcessor
from autoglm_jax.training.recipe import DataRecipe
from infer.agent import (
    AgentArgs,
    AgentDataArgs,
    AgentEvalArgs,
    AgentLoopFlags,
    run_agent,
    run_agent_data,
    run_agent_eval,
)


def test_agent_data_is_read_by_the_trainer(tmp_path):
    out = io.StringIO()
    path = run_agent_data(AgentDataArgs(out_dir=tmp_path, num_tasks=3, task_seed=5), out=out)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    steps = sum(len(oracle_episode(make_task(s, "train", *PHONE_SIZE))[0]) for s in (5, 6, 7))
    assert len(records) == steps and f"wrote {steps} records" in out.getvalue()
    for r in records:
        *prompt, answer = r["messages"]
        assert prompt[0]["role"] == "system" and answer["role"] == "assistant"
        images = [p for m in prompt if isinstance(m["content"], list) for p in m["content"]]
        images = [p["image_url"]["url"] for p in images if p["type"] == "image_url"]
        assert len(images) == 1 and (tmp_path / images[0]).is_file()  # the current screen only
        assert Image.open(tmp_path / images[0]).size == PHONE_SIZE
        split_reply(answer["content"])  # the loop reads what the model is taught to write
    first = records[0]["messages"][1]["content"][-1]["text"]
    assert first.startswith(make_task(5, "train").instruction)

    tok = Tokenizer.from_dir(TINY_TOKENIZER_DIR)
    ids, mask = D.tokenize_chat(tok, records[0]["messages"])
    assert tok.decode(ids[mask > 0]).strip().startswith("<answer>do(")
    recipe = DataRecipe(
        source="chat",
        paths=(str(path),),
        seq_len=640,
        batch_size=2,
        mode="pad",
        shuffle=False,
        prefetch=0,
    )
    config = ag.load_config("tiny-mm")
    ds, info = D.make_dataset(recipe, tok, media_processor=MultimodalProcessor(config, tok))
    assert info.records == len(records) and info.image_records == len(records)
    batch = next(iter(ds))
    # 112 x 196 pixels -> 8 x 14 patches -> 4 x 7 tokens after the 2x2 merge, one image a row
    per_row = (batch["inputs"] == config.image_token_id).sum(1)
    assert per_row.tolist() == [28, 28]
    np.testing.assert_array_equal(batch["image_grid_thw"][:2], [[1, 14, 8], [1, 14, 8]])
    assert batch["loss_mask"].sum() > 0


def test_agent_with_the_oracle_succeeds_and_saves_screens(tmp_path):
    out = io.StringIO()
    args = AgentArgs(task_seed=3, split="heldout", out_dir=tmp_path)
    result = run_agent(args, backend=oracle_backend, out=out)
    n = len(result.episode.steps)
    lines = out.getvalue().splitlines()
    assert lines[-1] == "success" and result.success and n >= 2
    assert sum(line.startswith("step ") for line in lines) == n
    assert len(list(tmp_path.glob("step-*.png"))) == n
    assert Image.open(tmp_path / "episode.gif").n_frames == n
    assert "RANDOM" not in out.getvalue()


def _screen_of(meta):
    """The phone on the screen a pointing/reading record names: the oracle replayed to it."""
    task = make_task(meta["seed"], "train", *PHONE_SIZE)
    phone = task.new_phone()
    for action in oracle_episode(task)[0][: meta["step"]]:
        phone.apply(action)
    return phone


def test_pointing_records_tap_the_named_element_on_a_screen_of_the_episode(tmp_path):
    args = AgentDataArgs(out_dir=tmp_path, num_tasks=6, task_seed=20, pointing=2)
    records = [json.loads(x) for x in run_agent_data(args, io.StringIO()).read_text().splitlines()]
    pointing = [r for r in records if "pointing" in r["task"]]
    steps = sum(len(oracle_episode(make_task(s, "train", *PHONE_SIZE))[0]) for s in range(20, 26))
    assert len(pointing) == 12 and len(records) == steps + 12
    kinds = set()
    for r in pointing:
        meta, label = r["task"], r["task"]["pointing"]
        system, user, answer = r["messages"]  # one turn: no history
        image = next(p for p in user["content"] if p["type"] == "image_url")["image_url"]["url"]
        assert image == f"img/train-{meta['seed']}-{meta['step']}.png"
        instruction = next(p for p in user["content"] if p["type"] == "text")["text"]
        assert label in instruction.splitlines()[0]
        # replay the oracle to the screen the record names; the tap must hit that label there
        phone = _screen_of(meta)
        tap = parse_action(split_reply(answer["content"])[1])
        hit = phone.element_at(*to_pixels(tap.element, phone.width, phone.height))
        assert hit is not None and hit.label == label
        kinds.add(hit.kind)
    assert len(kinds) >= 2  # not only one kind of screen
    with pytest.raises(SystemExit, match="pointing must be >= 0"):
        run_agent_data(AgentDataArgs(out_dir=tmp_path, num_tasks=1, pointing=-1), io.StringIO())


def test_dense_pointing_answers_every_label_of_one_screen(tmp_path):
    args = AgentDataArgs(out_dir=tmp_path, num_tasks=4, task_seed=30, dense_pointing=2)
    records = [json.loads(x) for x in run_agent_data(args, io.StringIO()).read_text().splitlines()]
    dense = [r for r in records if isinstance(r["task"].get("pointing"), list)]
    assert 6 <= len(dense) <= 8  # a screen with nothing labelled (only a search box) gives none
    for r in dense:
        meta, labels = r["task"], r["task"]["pointing"]
        system, *turns = r["messages"]
        users, answers = turns[0::2], turns[1::2]
        assert len(labels) == len(users) == len(answers) and 1 <= len(labels) <= 5
        assert len(set(labels)) == len(labels)
        images = [p for u in users for p in u["content"] if p["type"] == "image_url"]
        assert [p["image_url"]["url"] for p in images] == [
            f"img/train-{meta['seed']}-{meta['step']}.png"
        ]  # the screenshot once, in the first turn
        phone = _screen_of(meta)
        for label, user, answer in zip(labels, users, answers, strict=True):
            text = next(p for p in user["content"] if p["type"] == "text")["text"]
            assert label in text.splitlines()[0]
            tap = parse_action(split_reply(answer["content"])[1])
            hit = phone.element_at(*to_pixels(tap.element, phone.width, phone.height))
            assert hit is not None and hit.label == label


def test_reading_records_name_the_label_at_each_point(tmp_path):
    args = AgentDataArgs(out_dir=tmp_path, num_tasks=4, task_seed=30, reading=2)
    records = [json.loads(x) for x in run_agent_data(args, io.StringIO()).read_text().splitlines()]
    reading = [r for r in records if "reading" in r["task"]]
    assert 6 <= len(reading) <= 8  # a screen with nothing labelled (only a search box) gives none
    kinds = set()
    for r in reading:
        meta, labels = r["task"], r["task"]["reading"]
        system, *turns = r["messages"]
        users, answers = turns[0::2], turns[1::2]
        assert len(labels) == len(users) == len(answers) and 1 <= len(labels) <= 5
        images = [p for u in users for p in u["content"] if p["type"] == "image_url"]
        assert len(images) == 1 and images[0] is users[0]["content"][0]
        phone = _screen_of(meta)
        for label, user, answer in zip(labels, users, answers, strict=True):
            text = next(p for p in user["content"] if p["type"] == "text")["text"]
            point = [int(v) for v in text.split("[")[1].split("]")[0].split(",")]
            hit = phone.element_at(*to_pixels(point, phone.width, phone.height))
            assert hit is not None and hit.label == label
            assert parse_action(split_reply(answer["content"])[1]) == Finish(label)
            kinds.add(hit.kind)
    assert len(kinds) >= 2
    with pytest.raises(SystemExit, match="reading must be >= 0"):
        run_agent_data(AgentDataArgs(out_dir=tmp_path, num_tasks=1, reading=-1), io.StringIO())


def test_copy_drills_type_exactly_what_each_turn_says(tmp_path):
    args = AgentDataArgs(out_dir=tmp_path, num_tasks=3, task_seed=40, copy_drills=2)
    records = [json.loads(x) for x in run_agent_data(args, io.StringIO()).read_text().splitlines()]
    drills = [r for r in records if r["task"].get("copy_drill")]
    assert len(drills) == 6
    queries = []
    for r in drills:
        system, *turns = r["messages"]
        assert len(turns) == 8
        for user, answer in zip(turns[0::2], turns[1::2], strict=True):
            (part,) = user["content"]  # text only
            query = part["text"].removeprefix("Type ")
            assert parse_action(split_reply(answer["content"])[1]).text == query
            queries.append(query)
    assert len(set(queries)) > 20  # drawn, not a fixed list
    with pytest.raises(SystemExit, match="copy_drills must be >= 0"):
        run_agent_data(AgentDataArgs(out_dir=tmp_path, num_tasks=1, copy_drills=-1), io.StringIO())


def test_agent_data_without_episodes_writes_the_same_extra_records_alone(tmp_path):
    def records(out_dir, **kw):
        args = AgentDataArgs(out_dir=out_dir, num_tasks=3, task_seed=40, dense_pointing=2, **kw)
        path = run_agent_data(args, out=io.StringIO())
        return [json.loads(line) for line in path.read_text().splitlines()]

    every = records(tmp_path / "all")
    alone = records(tmp_path / "alone", episodes=False)
    assert alone and all("pointing" in r["task"] for r in alone)
    assert alone == [r for r in every if "pointing" in r["task"]]  # the same draws
    assert len(every) > len(alone)
    for r in alone:  # each record's screenshot is written
        (part,) = [p for p in r["messages"][1]["content"] if p["type"] == "image_url"]
        assert (tmp_path / "alone" / part["image_url"]["url"]).is_file()
    with pytest.raises(SystemExit, match="nothing to write"):
        run_agent_data(AgentDataArgs(out_dir=tmp_path / "none", episodes=False), io.StringIO())


def test_agent_eval_oracle_is_perfect_and_garbage_scores_zero(tmp_path):
    out = io.StringIO()
    docs = tmp_path / "agent.md"
    args = AgentEvalArgs(num_tasks=4, split="heldout", docs=docs)
    result = run_agent_eval(args, backend=oracle_backend, out=out, log=io.StringIO())
    assert (result.success_rate, result.step_accuracy) == (1.0, 1.0)
    assert "| 1.00 | 1.00 (" in out.getvalue() and docs.read_text().count("| heldout | 4 |") == 1

    def garbage(task, phone):
        return lambda messages: "I would rather not."

    out = io.StringIO()
    args = AgentEvalArgs(num_tasks=3, split="heldout", loop=AgentLoopFlags(max_steps=5))
    result = run_agent_eval(args, backend=garbage, out=out, log=io.StringIO())
    assert (result.success_rate, result.step_accuracy) == (0.0, 0.0)
    assert result.num_steps == 9  # three unusable replies end each episode
    assert "| 0.00 | 0.00 (9 steps) |" in out.getvalue()


def test_agent_eval_blank_screens_hides_the_screen_from_the_model_only():
    seen = []

    def looking_oracle(task, phone):  # records the screens it is sent, answers from the state
        oracle = oracle_backend(task, phone)

        def reply(messages):
            parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"]]
            seen.extend(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
            return oracle(messages)

        return reply

    def pixels(uri):
        data = base64.b64decode(uri.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    out = io.StringIO()
    args = AgentEvalArgs(num_tasks=3, split="heldout", blank_screens=True)
    result = run_agent_eval(args, backend=looking_oracle, out=out, log=io.StringIO())
    assert (result.success_rate, result.step_accuracy) == (1.0, 1.0)  # the phone is real
    assert "(blank screens)" in out.getvalue() and len(seen) == result.num_steps
    for image in map(pixels, seen):
        assert image.shape == (PHONE_SIZE[1], PHONE_SIZE[0], 3) and (image == 255).all()

    seen.clear()
    run_agent_eval(
        AgentEvalArgs(num_tasks=1), backend=looking_oracle, out=io.StringIO(), log=io.StringIO()
    )
    assert all(pixels(uri).std() > 0 for uri in seen)  # without the flag: the real screens


def test_agent_eval_splits_results_by_goal():
    def open_apps_only(task, phone):  # right on OpenApp goals, garbage elsewhere
        oracle = oracle_backend(task, phone)
        is_open = type(task.goal).__name__ == "OpenApp"
        return oracle if is_open else (lambda messages: "no")

    out = io.StringIO()
    args = AgentEvalArgs(num_tasks=12, split="heldout", loop=AgentLoopFlags(max_steps=4))
    result = run_agent_eval(args, backend=open_apps_only, out=out, log=io.StringIO())
    kinds = [type(make_task(i, "heldout").goal).__name__ for i in range(12)]
    parts = result.by_goal()
    assert {k: len(p.results) for k, p in parts.items()} == {k: kinds.count(k) for k in kinds}
    assert len(parts) >= 3 and sum(len(p.results) for p in parts.values()) == 12
    for kind, part in parts.items():
        expected = 1.0 if kind == "OpenApp" else 0.0
        assert (part.success_rate, part.step_accuracy) == (expected, expected)
        row = f"| {kind} | {kinds.count(kind)} | {expected:.2f} | {expected:.2f} ("
        assert row in out.getvalue()


@pytest.mark.slow  # ~40 s on a cold compilation cache (2 shared cores), ~10 s warm
def test_agent_cli_on_random_tiny_mm_fails_and_says_so(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "infer",
            "agent",
            "--model",
            "tiny-mm",
            "--max-steps",
            "2",
            "--max-tokens",
            "4",
            "--max-model-len",
            "1024",
            "--num-gpu-blocks-override",
            "80",
            "--max-num-seqs",
            "2",
            "--max-num-batched-tokens",
            "256",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SMOKE RUN" in proc.stderr and "RANDOM weights" in proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[-1] == "failure" and sum(line.startswith("step ") for line in lines) == 2
    assert len(list(tmp_path.glob("step-*.png"))) == 2
    assert Image.open(tmp_path / "episode.gif").n_frames == 2


@pytest.mark.parametrize("command", ["agent", "agent-eval", "agent-data"])
def test_commands_parse_their_flags(command, capsys):
    from infer.__main__ import main

    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "--task-seed" in capsys.readouterr().out


def test_system_prompt_choices(tmp_path):
    from autoglm_jax.agent.loop import COMPACT_SYSTEM_PROMPT, SYSTEM_PROMPT, SYSTEM_PROMPT_FILE
    from infer.agent import system_prompt

    model = tmp_path / "model"
    model.mkdir()
    assert system_prompt("auto", str(model)) == SYSTEM_PROMPT  # nothing carried: the full one
    (model / SYSTEM_PROMPT_FILE).write_text("Carried prompt.\n")
    assert system_prompt("auto", str(model)) == "Carried prompt."
    assert system_prompt("auto", "tiny-mm") == SYSTEM_PROMPT  # a preset name carries none
    assert system_prompt("compact") == COMPACT_SYSTEM_PROMPT
    assert AgentLoopFlags(system_prompt="full").config(str(model)).system_prompt == SYSTEM_PROMPT
    own = tmp_path / "mine.txt"
    own.write_text("Mine.")
    assert AgentLoopFlags(system_prompt=str(own)).config().system_prompt == "Mine."
    with pytest.raises(SystemExit, match="--system-prompt: 'nope.txt' is neither"):
        system_prompt("nope.txt")


def test_agent_data_writes_the_chosen_system_prompt(tmp_path):
    from autoglm_jax.agent.loop import COMPACT_SYSTEM_PROMPT

    args = AgentDataArgs(out_dir=tmp_path, num_tasks=1, system_prompt="compact")
    path = run_agent_data(args, out=io.StringIO())
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records and all(
        r["messages"][0] == {"role": "system", "content": COMPACT_SYSTEM_PROMPT} for r in records
    )

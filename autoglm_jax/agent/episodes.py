"""Training data from the simulator: the oracle's episodes as chat JSONL the trainer reads.

Each oracle step becomes one record whose messages are exactly what the agent loop would send
at that step (`loop.build_messages` with the same AgentConfig: system prompt, the first
(user, assistant) pair, the most recent max_history_turns - 1 pairs, the current turn; only the
current turn carries its screenshot) followed by the oracle's answer as the assistant turn,
written `<answer>do(...)</answer>` (what `split_reply` reads). Screenshots are PNG files under
`img/`, referenced by paths relative to the JSONL (an `image_url` part whose url is the path,
where inference sends a data URI of the same PNG; the chat template renders both alike).

Every assistant turn of a record is trained on (training/tokens.py masks them all), so the
actions of earlier steps, present as history, are learnt again in later steps' records: the
early steps of an episode weigh more. They are the oracle's actions either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoglm_jax.agent.actions import Action, Finish
from autoglm_jax.agent.loop import AgentConfig, Turn, build_messages, turn_text
from autoglm_jax.agent.tasks import Task, make_task

PHONE_SIZE = (112, 196)  # width, height: 4 x 7 vision tokens after the 2x2 merge
JSONL_NAME = "episodes.jsonl"


def answer_text(action: Action) -> str:
    """An action as the assistant's reply: the Open-AutoGLM answer tag around `str(action)`."""
    return f"<answer>{action}</answer>"


def task_records(
    task: Task, out_dir: Path, config: AgentConfig = AgentConfig(), max_steps: int = 20
) -> list[dict[str, Any]]:
    """The oracle's episode of `task` as one record per step; screenshots are written to
    out_dir/img/. Raises ValueError if the oracle does not reach the goal (a simulator bug)."""
    phone, turns, records = task.new_phone(), [], []
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    for index in range(max_steps):
        name = f"img/{task.split}-{task.seed}-{index}.png"
        phone.screenshot().save(out_dir / name)
        turns.append(Turn(index, turn_text(task.instruction, index, phone.current_app), name))
        action = task.next_action(phone)
        messages = build_messages(turns, config)
        turns[-1].reply = answer_text(action)
        records.append(
            {
                "messages": [*messages, {"role": "assistant", "content": turns[-1].reply}],
                "task": {"split": task.split, "seed": task.seed, "step": index},
            }
        )
        phone.apply(action)
        if isinstance(action, Finish):
            if not task.done(phone):
                raise ValueError(f"the oracle finished {task.split} task {task.seed} undone")
            return records
    raise ValueError(f"the oracle did not finish {task.split} task {task.seed} in {max_steps}")


def write_episodes(
    out_dir: str | Path,
    num_tasks: int,
    seed: int = 0,
    split: str = "train",
    width: int = PHONE_SIZE[0],
    height: int = PHONE_SIZE[1],
    config: AgentConfig = AgentConfig(),
) -> Path:
    """Oracle records of tasks seed .. seed + num_tasks - 1 of `split` on a width x height
    phone, written to out_dir/episodes.jsonl (returned) with the screenshots in out_dir/img/."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSONL_NAME
    with open(path, "w", encoding="utf-8") as f:
        for task_seed in range(seed, seed + num_tasks):
            task = make_task(task_seed, split, width, height)
            for record in task_records(task, out, config):
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path

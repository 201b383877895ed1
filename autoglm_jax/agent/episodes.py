"""Training data from the simulator: the oracle's episodes as chat JSONL the trainer reads.

Each oracle step becomes one record whose messages are exactly what the agent loop would send
at that step (`loop.build_messages` with the same AgentConfig: system prompt, the first
(user, assistant) pair, the most recent max_history_turns - 1 pairs, the current turn; only the
current turn carries its screenshot) followed by the oracle's answer as the assistant turn,
written `<answer>do(...)</answer>` (what `split_reply` reads). Screenshots are PNG files under
`img/`, referenced by paths relative to the JSONL (an `image_url` part whose url is the path,
where inference sends a data URI of the same PNG; the chat template renders both alike).

Pointing records (`pointing` per task) teach the vision tower to find a label: on a screen of the
episode, "Tap <label>" for a random drawn element (an app icon, a Settings row, a button) and
the answer a tap at its centre, as a one-turn record. The task episodes alone did not teach it:
a model trained on them tapped where a dialog's button usually is, whatever the button said.

Every assistant turn of a record is trained on (training/tokens.py masks them all), so the
actions of earlier steps, present as history, are learnt again in later steps' records: the
early steps of an episode weigh more. They are the oracle's actions either way.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any, Callable

from autoglm_jax.agent.actions import Action, Finish, Tap, Type, to_relative
from autoglm_jax.agent.loop import AgentConfig, Turn, build_messages, turn_text
from autoglm_jax.agent.screens import Element
from autoglm_jax.agent.tasks import GOALS, Task, make_task
from autoglm_jax.agent.wordings import letter_query, random_words_query

PHONE_SIZE = (112, 196)  # width, height: 4 x 7 vision tokens after the 2x2 merge
JSONL_NAME = "episodes.jsonl"
POINTING_WORDINGS = ("Tap {label}", "Tap on {label}", "Press {label}", "Select {label}")
READING_WORDINGS = ("What does {point} say?", "Read {point}", "What is written at {point}?")


def answer_text(action: Action) -> str:
    """An action as the assistant's reply: the Open-AutoGLM answer tag around `str(action)`."""
    return f"<answer>{action}</answer>"


@dataclasses.dataclass(frozen=True)
class Screen:
    """What a pointing record needs of one screen an episode showed."""

    image: str  # path relative to the JSONL
    current_app: str
    elements: tuple[Element, ...]  # boxes in pixels
    size: tuple[int, int]  # width, height


def pointing_record(
    screen: Screen, rng: random.Random, config: AgentConfig, meta: dict[str, Any]
) -> dict[str, Any] | None:
    """One "Tap <label>" record on `screen`, or None when nothing labelled is drawn. The search
    box's label is a name, not drawn text: never asked for."""
    elements = [e for e in screen.elements if e.kind != "text_box"]
    if not elements:
        return None
    element = rng.choice(elements)
    instruction = rng.choice(POINTING_WORDINGS).format(label=element.label)
    turns = [Turn(0, turn_text(instruction, 0, screen.current_app), screen.image)]
    answer = answer_text(Tap(to_relative(element.box.center, *screen.size)))
    return {
        "messages": [*build_messages(turns, config), {"role": "assistant", "content": answer}],
        "task": {**meta, "pointing": element.label},
    }


def _one_screen_record(
    screen: Screen,
    rng: random.Random,
    config: AgentConfig,
    labels: int,
    turn: Callable[[Element], tuple[str, Action]],
) -> tuple[list[dict[str, Any]], list[Element]] | None:
    """Up to `labels` distinct labelled elements of `screen`, one (question, answer) turn
    each (`turn(element)`): the screenshot in the first user turn, the later ones text only."""
    elements = [e for e in screen.elements if e.kind != "text_box"]
    if not elements:
        return None
    picked = rng.sample(elements, min(labels, len(elements)))
    messages: list[dict[str, Any]] = []
    for index, element in enumerate(picked):
        question, action = turn(element)
        if index == 0:
            first = Turn(0, turn_text(question, 0, screen.current_app), screen.image)
            messages.extend(build_messages([first], config))
        else:
            messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
        messages.append({"role": "assistant", "content": answer_text(action)})
    return messages, picked


def dense_pointing_record(
    screen: Screen, rng: random.Random, config: AgentConfig, meta: dict[str, Any], labels: int = 5
) -> dict[str, Any] | None:
    """Up to `labels` "Tap <label>" questions on one screen as one record, each answered by a
    tap at the element's centre. Every answer is trained, so a record teaches `labels` labels
    for about the price of one pointing record."""

    def turn(element: Element) -> tuple[str, Action]:
        question = rng.choice(POINTING_WORDINGS).format(label=element.label)
        return question, Tap(to_relative(element.box.center, *screen.size))

    made = _one_screen_record(screen, rng, config, labels, turn)
    if made is None:
        return None
    messages, picked = made
    return {"messages": messages, "task": {**meta, "pointing": [e.label for e in picked]}}


def reading_record(
    screen: Screen, rng: random.Random, config: AgentConfig, meta: dict[str, Any], labels: int = 5
) -> dict[str, Any] | None:
    """The converse of `dense_pointing_record`: up to `labels` "What does [x, y] say?"
    questions on one screen (an element's centre, relative 0-999), each answered by
    `finish(message=<its label>)`. A tap on the right row needs the label read off the
    screen; this asks for the reading itself, as text the model writes."""

    def turn(element: Element) -> tuple[str, Action]:
        x, y = to_relative(element.box.center, *screen.size)
        return rng.choice(READING_WORDINGS).format(point=f"[{x}, {y}]"), Finish(element.label)

    made = _one_screen_record(screen, rng, config, labels, turn)
    if made is None:
        return None
    messages, picked = made
    return {"messages": messages, "task": {**meta, "reading": [e.label for e in picked]}}


def copy_drill_record(
    rng: random.Random, config: AgentConfig, meta: dict[str, Any], queries: int = 4
) -> dict[str, Any]:
    """`queries` text-only turns "Type <query>", each answered by a Type of exactly that text
    (made-up letters or random query words): nothing but copying the turn answers them."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": config.system_prompt}]
    for _ in range(queries):
        query = letter_query(rng) if rng.random() < 0.5 else random_words_query(rng)
        messages.append({"role": "user", "content": [{"type": "text", "text": f"Type {query}"}]})
        messages.append({"role": "assistant", "content": answer_text(Type(query))})
    return {"messages": messages, "task": {**meta, "copy_drill": True}}


def task_records(
    task: Task,
    out_dir: Path,
    config: AgentConfig = AgentConfig(),
    max_steps: int = 20,
    pointing: int = 0,
    dense_pointing: int = 0,
    copy_drills: int = 0,
    reading: int = 0,
    episodes: bool = True,
) -> list[dict[str, Any]]:
    """The oracle's episode of `task` as one record per step, plus `pointing` pointing records,
    `dense_pointing` dense ones (`dense_pointing_record`) and `reading` reading records
    (`reading_record`) on screens of the episode, and `copy_drills` copy drills; screenshots
    are written to out_dir/img/. Without `episodes`, only the extra records (the same ones:
    the step records draw nothing). Raises ValueError if the oracle does not reach the goal (a
    simulator bug)."""
    phone, turns, records = task.new_phone(), [], []
    rng = random.Random(f"pointing:{task.split}:{task.seed}")
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    screens: list[tuple[int, Screen]] = []
    for index in range(max_steps):
        name = f"img/{task.split}-{task.seed}-{index}.png"
        phone.screenshot().save(out_dir / name)
        if pointing or dense_pointing or reading:  # only these records need its elements
            size = (phone.width, phone.height)
            screens.append((index, Screen(name, phone.current_app, phone.elements, size)))
        turns.append(Turn(index, turn_text(task.instruction, index, phone.current_app), name))
        action = task.next_action(phone)
        messages = build_messages(turns, config)
        turns[-1].reply = answer_text(action)
        if episodes:
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
            # pointing records first: the draws of a data set made without the others stay
            for make_record, count in (
                (pointing_record, pointing),
                (dense_pointing_record, dense_pointing),
                (reading_record, reading),
            ):
                for _ in range(count):
                    index, screen = rng.choice(screens)
                    meta = {"split": task.split, "seed": task.seed, "step": index}
                    record = make_record(screen, rng, config, meta)
                    if record is not None:
                        records.append(record)
            for _ in range(copy_drills):
                records.append(copy_drill_record(rng, config, {"split": task.split}))
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
    pointing: int = 0,
    letter_queries: float = 0.0,
    goals: tuple[str, ...] = (),
    dense_pointing: int = 0,
    copy_drills: int = 0,
    reading: int = 0,
    episodes: bool = True,
) -> Path:
    """Oracle records of tasks seed .. seed + num_tasks - 1 of `split` on a width x height
    phone (and `pointing` pointing records per task; `letter_queries`: see `make_task`),
    written to out_dir/episodes.jsonl (returned) with the screenshots in out_dir/img/.
    With `goals` (names from tasks.GOALS), the first num_tasks tasks from `seed` on whose goal
    is one of them: a focused set for a later training stage. `dense_pointing`, `copy_drills`,
    `reading`: extra records per task (`task_records`); `episodes` False writes only those.
    """
    unknown = sorted(set(goals) - set(GOALS))
    if unknown:
        raise ValueError(f"unknown goals {unknown}: the goals are {list(GOALS)}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")
    for name, count in (
        ("pointing", pointing),
        ("dense_pointing", dense_pointing),
        ("copy_drills", copy_drills),
        ("reading", reading),
    ):
        if count < 0:
            raise ValueError(f"{name} must be >= 0, got {count}")
    if not episodes and not (pointing or dense_pointing or copy_drills or reading):
        raise ValueError(
            "without the episodes (--no-episodes) there is nothing to write: ask for pointing, "
            "dense_pointing, reading or copy_drills records"
        )
    if not 0.0 <= letter_queries <= 1.0:
        raise ValueError(f"letter_queries must be in [0, 1], got {letter_queries}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSONL_NAME
    with open(path, "w", encoding="utf-8") as f:
        written, task_seed = 0, seed
        while written < num_tasks:
            task = make_task(task_seed, split, width, height, letter_queries)
            task_seed += 1
            if goals and type(task.goal).__name__ not in goals:
                continue
            written += 1
            records = task_records(
                task,
                out,
                config,
                pointing=pointing,
                dense_pointing=dense_pointing,
                copy_drills=copy_drills,
                reading=reading,
                episodes=episodes,
            )
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path

"""Scoring a backend on simulator tasks: task success (the task's checker on the final phone)
and per-step action accuracy (`step_is_correct` on the state the model saw when it chose).

A step whose reply does not parse counts as a wrong step. `oracle_backend` answers with the
oracle's action: a reference that scores 1.0 on both, used by tests. `blank_screens` shows the
model a blank screen of the same size at every step (the phone and the judge see the real
state): a control, since a model that scores the same without the screen does not read it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from PIL import Image

from autoglm_jax.agent.actions import Action
from autoglm_jax.agent.episodes import PHONE_SIZE, answer_text
from autoglm_jax.agent.loop import AgentConfig, Backend, Episode, Step, run_episode
from autoglm_jax.agent.phone import SimPhone
from autoglm_jax.agent.tasks import Task, make_task, step_is_correct

BackendFactory = Callable[[Task, SimPhone], Backend]
"""A backend for one task's episode on its phone (most ignore both; the oracle reads them)."""


class JudgedPhone:
    """A SimPhone that judges each action against the oracle before performing it; with
    `blank_screens` its screenshots are blank (white, the phone's size)."""

    def __init__(self, task: Task, phone: SimPhone, blank_screens: bool = False):
        self.task, self.phone, self.blank_screens = task, phone, blank_screens
        self.judged: list[bool] = []

    @property
    def current_app(self) -> str:
        return self.phone.current_app

    def screenshot(self) -> Any:
        if self.blank_screens:
            return Image.new("RGB", (self.phone.width, self.phone.height), (255, 255, 255))
        return self.phone.screenshot()

    def apply(self, action: Action) -> str:
        self.judged.append(step_is_correct(self.task, self.phone, action))
        return self.phone.apply(action)


def oracle_backend(task: Task, phone: SimPhone) -> Backend:
    """Replies with the oracle's next action on `phone` (whatever the messages say)."""
    return lambda messages: answer_text(task.next_action(phone))


@dataclasses.dataclass(frozen=True)
class TaskResult:
    task: Task
    episode: Episode
    phone: SimPhone  # the final state
    correct: tuple[bool, ...]  # per step; False where the reply did not parse

    @property
    def success(self) -> bool:
        return self.task.done(self.phone)


def run_task(
    task: Task,
    backend: BackendFactory,
    config: AgentConfig = AgentConfig(),
    on_step: Callable[[Step], None] | None = None,
    blank_screens: bool = False,
) -> TaskResult:
    """One episode of `task` on a fresh phone, judged step by step."""
    phone = task.new_phone()
    judged = JudgedPhone(task, phone, blank_screens)
    episode = run_episode(judged, task.instruction, config, on_step, backend(task, phone))
    marks = iter(judged.judged)  # one per step that parsed, in order
    correct = tuple(next(marks) if s.action is not None else False for s in episode.steps)
    return TaskResult(task, episode, phone, correct)


@dataclasses.dataclass(frozen=True)
class EvalResult:
    results: tuple[TaskResult, ...]

    @property
    def success_rate(self) -> float:
        return sum(r.success for r in self.results) / max(1, len(self.results))

    @property
    def step_accuracy(self) -> float:
        marks = [m for r in self.results for m in r.correct]
        return sum(marks) / max(1, len(marks))

    @property
    def num_steps(self) -> int:
        return sum(len(r.correct) for r in self.results)

    def by_goal(self) -> dict[str, EvalResult]:
        """The results split by the kind of goal (OpenApp, SetToggle, ...), in first-seen order:
        where a model fails is rarely spread evenly over the kinds."""
        groups: dict[str, list[TaskResult]] = {}
        for r in self.results:
            groups.setdefault(type(r.task.goal).__name__, []).append(r)
        return {kind: EvalResult(tuple(rs)) for kind, rs in groups.items()}


def evaluate(
    backend: BackendFactory,
    num_tasks: int,
    split: str = "heldout",
    seed: int = 0,
    width: int = PHONE_SIZE[0],
    height: int = PHONE_SIZE[1],
    config: AgentConfig = AgentConfig(),
    on_task: Callable[[TaskResult], None] | None = None,
    blank_screens: bool = False,
) -> EvalResult:
    """Tasks seed .. seed + num_tasks - 1 of `split`, one episode each (`blank_screens`: the
    model sees a blank screen at every step; the module docstring says why)."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")
    results = []
    for task_seed in range(seed, seed + num_tasks):
        task = make_task(task_seed, split, width, height)
        result = run_task(task, backend, config, blank_screens=blank_screens)
        results.append(result)
        if on_task is not None:
            on_task(result)
    return EvalResult(tuple(results))

"""The simulated phone's screens labelled for the vision tower: which element lies under each
vision token (training/tower.py trains a tower on them; docs/agent.md, "The vision tower
collapsed", says why).

    classes = SCREEN_CLASSES                        # "none", the apps, toggles, buttons
    images = labelled_screens("train", range(300000, 304000), merge_size=2)
"""

from __future__ import annotations

import random
from typing import Iterable

import numpy as np

from autoglm_jax.agent.episodes import PHONE_SIZE
from autoglm_jax.agent.phone import DIALOGS, SimPhone
from autoglm_jax.agent.screens import APPS, TOGGLES
from autoglm_jax.agent.tasks import make_task
from autoglm_jax.training.tower import LabelledImage, token_centres

_BUTTONS = sorted({"Search", "Delete", *(b for d in DIALOGS.values() for b in d.buttons)})
SCREEN_CLASSES: tuple[str, ...] = ("none", *APPS, *TOGGLES, *_BUTTONS)
"""Class 0 is no labelled element; then every app, Settings toggle and button by name (the
search box, which has no fixed label, counts as none)."""


def token_labels(phone: SimPhone, merge_size: int) -> np.ndarray:
    """i32[tokens]: the SCREEN_CLASSES index of the labelled element under each vision token's
    centre of `phone`'s current screen (0 where there is none)."""
    labelled = [e for e in phone.elements if e.kind != "text_box"]
    centres = token_centres(phone.height, phone.width, merge_size)
    labels = np.zeros(len(centres), np.int32)
    for k, (x, y) in enumerate(centres):
        hit = next((e for e in labelled if e.box.contains(int(x), int(y))), None)
        if hit is not None:
            labels[k] = SCREEN_CLASSES.index(hit.label)
    return labels


def labelled_screens(
    split: str, task_seeds: Iterable[int], merge_size: int, *, seed: int = 0, max_steps: int = 3
) -> list[LabelledImage]:
    """One screen per task: its phone after 0 to `max_steps` oracle steps (drawn with
    `seed`), so home screens, Settings, search pages and dialogs all appear."""
    rng, out = random.Random(seed), []
    for task_seed in task_seeds:
        phone = make_task(task_seed, split, *PHONE_SIZE).phone_after(rng.randint(0, max_steps))
        image = np.asarray(phone.screenshot())
        out.append(LabelledImage(image, token_labels(phone, merge_size)))
    return out

"""Models that ship inside the package, by name: weights this project trained itself, so the
first command runs a real model with nothing downloaded.

    ag.load("autoglm-phone-sim")   # the phone agent trained on the simulated phone (int8)

Each is an `ag.save` / `train export` directory under autoglm_jax/assets/; its MODEL_CARD.md
says how it was made (recipe, command, evaluation)."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"

# name -> folder under autoglm_jax/assets
SHIPPED_MODELS = {"autoglm-phone-sim": "autoglm_phone_sim"}


def shipped_model_dir(name: str | os.PathLike) -> Path | None:
    """The directory of the shipped model called `name`, or None when no model has that name.
    A name whose directory is missing (a partial install) raises, naming what is missing."""
    folder = SHIPPED_MODELS.get(str(name))
    if folder is None:
        return None
    directory = ASSETS / folder
    if not directory.is_dir():
        raise FileNotFoundError(
            f"shipped model {name!r}: {directory} is missing (a partial install? reinstall "
            "autoglm-jax, or rebuild it with tools/build-phone-agent)"
        )
    return directory

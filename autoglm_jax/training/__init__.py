"""Training: Grain data pipeline, losses, the sharded train step, the loop with Orbax
checkpoints, recipes and metrics. Entry points: `run_pretrain(recipe)`, `run_distill(recipe)`;
`pretrain_tower(model, images, ...)` trains a vision tower alone on per-token labels.

    from autoglm_jax.training import load_recipe, run_pretrain
    result = run_pretrain(load_recipe("configs/recipes/tiny-pretrain.toml", {"steps": 10}))
"""

from autoglm_jax.training.data import DataError, JsonlSource, make_dataset, tokenize_chat
from autoglm_jax.training.loop import (
    NonFiniteError,
    RunResult,
    restore_checkpoint,
    run_distill,
    run_pretrain,
    train,
)
from autoglm_jax.training.media import MultimodalProcessor
from autoglm_jax.training.recipe import (
    CheckpointRecipe,
    DataRecipe,
    DistillRecipe,
    MeshRecipe,
    ModelRecipe,
    OptimRecipe,
    TrainRecipe,
    load_recipe,
    model_config,
)
from autoglm_jax.training.step import (
    TrainState,
    make_eval_step,
    make_optimizer,
    make_train_step,
    trainable_mask,
)
from autoglm_jax.training.tower import LabelledImage, TowerResult, pretrain_tower

__all__ = [
    "CheckpointRecipe",
    "DataError",
    "DataRecipe",
    "DistillRecipe",
    "JsonlSource",
    "LabelledImage",
    "MeshRecipe",
    "ModelRecipe",
    "MultimodalProcessor",
    "NonFiniteError",
    "OptimRecipe",
    "RunResult",
    "TowerResult",
    "TrainRecipe",
    "TrainState",
    "load_recipe",
    "make_dataset",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "model_config",
    "pretrain_tower",
    "restore_checkpoint",
    "run_distill",
    "run_pretrain",
    "tokenize_chat",
    "train",
    "trainable_mask",
]

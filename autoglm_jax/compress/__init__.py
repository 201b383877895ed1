"""Structured pruning of the GLM decoder (heads and FFN neurons) into a smaller config.

pruned, report = prune_model(model, calibration_batches, PruneConfig(flops_reduction=0.35))
"""

from autoglm_jax.compress.prune import (
    Importance,
    PrunePlan,
    PruneReport,
    apply_plan,
    decoder_flops,
    full_plan,
    layer_flops,
    mask_params,
    measure_importance,
    plan_pruning,
    prune_model,
    pruned_text_config,
    slice_params,
    uniform_pruned_config,
)
from autoglm_jax.config.quant import PruneConfig

__all__ = [
    "Importance",
    "PruneConfig",
    "PrunePlan",
    "PruneReport",
    "apply_plan",
    "decoder_flops",
    "full_plan",
    "layer_flops",
    "mask_params",
    "measure_importance",
    "plan_pruning",
    "prune_model",
    "pruned_text_config",
    "slice_params",
    "uniform_pruned_config",
]

"""What the compression report's recipes weigh: the int8 / int4 configs it trains, bytes per
stack of a model, and the same recipes sized at a full-size preset's shapes (no training)."""

from __future__ import annotations

from typing import Any

from autoglm_jax.config.quant import PruneConfig, QuantConfig, QuantRule

# Every decoder matmul int8, lm_head included (the embedding table is a lookup: float);
# int4 in groups of 32 with an int8 lm_head. "every stack": scope="all".
INT8 = QuantConfig(weights="int8", rules=())
INT4 = QuantConfig(weights="int4", group_size=32, rules=(QuantRule("lm_head", "int8"),))


def stack_bytes(params: Any) -> dict[str, int]:
    """Bytes of each top-level stack (the decoder split into its layers and the rest)."""
    from autoglm_jax.quant import tree_bytes

    out: dict[str, int] = {}
    for key, sub in params.items():
        if key == "language_model" and isinstance(sub, dict):
            out["decoder layers"] = tree_bytes(
                {k: v for k, v in sub.items() if k.startswith("layers_")}
            )
            out["embeddings, lm_head, norm"] = tree_bytes(
                {k: v for k, v in sub.items() if not k.startswith("layers_")}
            )
        else:
            out[key] = tree_bytes(sub)
    return out


def projected_bytes(preset: str, flops_reduction: float) -> dict[str, Any]:
    """The report's recipes sized at `preset`'s shapes with `jax.eval_shape` (no memory, no
    training): bf16 bytes of each compressed variant and its share of the float model's."""
    from autoglm_jax.compress import uniform_pruned_config
    from autoglm_jax.config import load_config
    from autoglm_jax.quant import abstract_bytes

    cfg = load_config(preset).with_dtypes("bfloat16", "bfloat16")
    pruned = cfg.replace(
        text=uniform_pruned_config(cfg.text, PruneConfig(flops_reduction=flops_reduction))
    )
    int8, int4 = INT8, INT4
    pct = f"{flops_reduction:.0%}-pruned"
    variants = [
        ("float", cfg, None),
        ("int8, lm_head float (QuantConfig default)", cfg, QuantConfig()),
        ("int8", cfg, int8),
        ("int4", cfg, int4),
        (pct, pruned, None),
        (f"{pct} + int8", pruned, int8),
    ]
    if cfg.vision is not None or getattr(cfg, "audio", None) is not None:
        variants.insert(3, ("int8, every stack", cfg, int8.replace(scope="all")))
        variants.append((f"{pct} + int8, every stack", pruned, int8.replace(scope="all")))
    base = abstract_bytes(cfg)
    rows = []
    for name, c, q in variants:
        b = abstract_bytes(c if q is None else c.replace(text=c.text.replace(quant=q)))
        rows.append({"model": name, "bytes": b, "share": b / base})
    return {"preset": preset, "bf16_bytes": base, "rows": rows}

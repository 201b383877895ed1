"""Export: a float (QAT-trained) model -> a compressed model with integer weights.

    compressed = export_quantized(model, QuantConfig(weights="int8"))
    ag.save(compressed, "checkpoints/tiny-int8")      # ag.load reads it back, still integer

The compressed model's config is the float one with `text.quant` set, which makes the decoder
build `QuantizedWeights`; its logits equal the QAT forward's (`FakeQuant` with the same
QuantConfig), because both use `formats.quantize` / `formats.dequantize` on the same kernels
(and embedding tables, where a rule names them).
Export changes storage, not numbers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoglm_jax.config import ModelConfig
from autoglm_jax.config.quant import QuantConfig
from autoglm_jax.families import abstract_params, decoder_path, get_family
from autoglm_jax.nn.layers import Einsum, Embed, EmbeddingTable, float_table
from autoglm_jax.nn.quant_formats import dequantize, quantize, tree_bytes
from autoglm_jax.nn.quantized import QuantPolicy

Array = jax.Array

_COLLECTION = "quantized"


@dataclasses.dataclass(frozen=True)
class _Exporter(QuantPolicy):
    """Runs the float model once and records each selected Einsum's quantized weight."""

    def einsum(self, module: Einsum, x: Array) -> Array:
        kernel = module.float_kernel()
        layout = self.layout(module)
        if layout is None:
            return module.product(x, kernel)
        q, scale = quantize(kernel, layout, self.config.weight_clip, module.param_dtype)
        module.put_variable(_COLLECTION, "kernel", q)
        module.put_variable(_COLLECTION, "scale", scale)
        return module.product(x, dequantize(q, scale, layout))

    def table(self, module: Embed) -> EmbeddingTable:
        table, layout = float_table(module), self.table_layout(module)
        if layout is None:
            return table
        q, scale = quantize(table.full(), layout, self.config.weight_clip, module.param_dtype)
        module.put_variable(_COLLECTION, "embedding", q)
        module.put_variable(_COLLECTION, "scale", scale)
        return EmbeddingTable(dequantize(q, scale, layout))


def quantized_config(config: ModelConfig, quant: QuantConfig) -> ModelConfig:
    """`config` with its decoder marked as stored quantized by `quant`."""
    if config.text is None:
        raise ValueError(f"model_type {config.model_type!r} has no GLM decoder to quantize")
    if config.text.quant is not None:
        raise ValueError("the model is already quantized")
    return config.replace(text=config.text.replace(quant=quant))


def _merge(params: Any, quantized: Any) -> Any:
    """params with each quantized Einsum's {"kernel"} (or table's {"embedding"}) replaced by
    the integer one and its "scale"."""
    if not isinstance(quantized, dict):
        return quantized
    out = dict(params)
    for key, sub in quantized.items():
        if key in ("kernel", "embedding") and not isinstance(sub, dict):
            out[key], out["scale"] = sub, quantized["scale"]
        elif key != "scale":
            out[key] = _merge(params[key], sub)
    return out


def export_quantized(model: Any, quant: QuantConfig) -> Any:
    """The compressed `ag.Model`: integer kernels plus scales for the Einsums `quant` selects
    in the GLM decoder, every other param as it was (same dtype), config.text.quant = quant.

    Raises if the resulting tree differs from what the compressed module expects.
    """
    cfg = model.config
    new_cfg = quantized_config(cfg, quant)
    arch = get_family(cfg.model_type, "model")
    exporter = model.module.clone(dot_general=_Exporter(quant, decoder_path(cfg)))
    args = arch.init_args(cfg)

    @jax.jit
    def collect(params: Any) -> Any:
        _, state = exporter.apply({"params": params}, *args, mutable=[_COLLECTION])
        return state[_COLLECTION]

    params = _merge(model.params, collect(model.params))
    module = arch.build(new_cfg, None)
    expected = nn.unbox(abstract_params(module, arch.init_args(new_cfg)))
    got = jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), params)
    want = jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), expected)
    if got != want:
        raise ValueError(
            "export produced a param tree the compressed module does not expect: "
            f"{jax.tree_util.tree_structure(got)} vs "
            f"{jax.tree_util.tree_structure(want)}"
        )
    return dataclasses.replace(
        model, config=new_cfg, params=params, module=module, random_init=False
    )


def weight_bytes(model: Any) -> dict[str, int]:
    """Measured bytes of `model.params` against the same architecture in bf16.

    total            every param as held in memory (integer kernels, f32 scales, the rest)
    bf16             every param of the float architecture at 2 bytes (eval_shape, no memory)
    quantized        the quantized Einsums' kernels (and tables) plus scales
    quantized_bf16   those float kernels (and tables) at 2 bytes
    """
    cfg = model.config
    float_cfg = cfg.replace(text=cfg.text.replace(quant=None)) if cfg.text is not None else cfg
    arch = get_family(cfg.model_type, "model")
    floats = nn.unbox(abstract_params(arch.build(float_cfg, None), arch.init_args(float_cfg)))
    out = {
        "total": tree_bytes(model.params),
        "bf16": 2 * _size(floats),
        "quantized": 0,
        "quantized_bf16": 0,
    }

    def walk(tree: Any, ref: Any) -> None:
        if not isinstance(tree, dict):
            return
        name = "kernel" if "kernel" in tree else "embedding"
        kernel = tree.get(name)
        if "scale" in tree and kernel is not None and jnp.issubdtype(kernel.dtype, jnp.integer):
            out["quantized"] += tree_bytes((kernel, tree["scale"]))
            out["quantized_bf16"] += 2 * _size(ref[name])
            return
        for key, sub in tree.items():
            walk(sub, ref[key])

    walk(model.params, floats)
    return out


def abstract_bytes(config: ModelConfig) -> int:
    """Bytes the params of a model of `config` take, from `jax.eval_shape` (nothing is
    allocated): integer kernels and scales when `config.text.quant` is set, every float param
    at the config's param dtype. Equals `tree_bytes(ag.load(...).params)` of such a model."""
    arch = get_family(config.model_type, "model")
    return tree_bytes(nn.unbox(abstract_params(arch.build(config, None), arch.init_args(config))))


def _size(tree: Any) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))

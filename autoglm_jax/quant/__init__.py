"""Quantization: int8 / int4 weight formats, QAT (fake quantization with straight-through
gradients), export to integer weights, and the quantized matmuls inference runs.

    policy = fake_quant_policy(QuantConfig(weights="int4"), model.config)   # QAT
    qat = qat_model(model, QuantConfig(weights="int4"))                     # same, as a Model
    compressed = export_quantized(qat, QuantConfig(weights="int4"))         # integer weights
"""

from autoglm_jax.config.quant import PruneConfig, QuantConfig, QuantRule
from autoglm_jax.families import decoder_path
from autoglm_jax.nn.quant_formats import (
    Layout,
    dequantize,
    layout_for,
    pack_int4,
    quantize,
    tree_bytes,
    unpack_int4,
)
from autoglm_jax.nn.quantized import QuantizedWeights, QuantPolicy
from autoglm_jax.quant.export import (
    abstract_bytes,
    export_quantized,
    quantized_config,
    weight_bytes,
)
from autoglm_jax.quant.qat import FakeQuant, fake_quant, fake_quant_policy, qat_model, qat_module

__all__ = [
    "FakeQuant",
    "Layout",
    "PruneConfig",
    "QuantConfig",
    "QuantPolicy",
    "QuantRule",
    "QuantizedWeights",
    "abstract_bytes",
    "decoder_path",
    "dequantize",
    "export_quantized",
    "fake_quant",
    "fake_quant_policy",
    "layout_for",
    "pack_int4",
    "qat_model",
    "qat_module",
    "quantize",
    "quantized_config",
    "tree_bytes",
    "unpack_int4",
    "weight_bytes",
]

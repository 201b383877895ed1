"""The compression recipes' [quant] / [prune] tables parse into their dataclasses."""

import tomllib
from pathlib import Path

import pytest

from autoglm_jax.config import ConfigError
from autoglm_jax.config._common import from_dict
from autoglm_jax.config.quant import PruneConfig, QuantConfig, QuantRule

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"


def _table(name, section):
    with open(RECIPES / name, "rb") as f:
        return tomllib.load(f)[section]


def test_qat_recipes():
    int8 = from_dict(QuantConfig, _table("qat-int8.toml", "quant"), source="qat-int8")
    assert int8.weights == "int8" and int8.format_for("lm_head") == "none"
    assert int8.format_for("layers_2/mlp/down_proj") == "int8"
    int4 = from_dict(QuantConfig, _table("qat-int4.toml", "quant"), source="qat-int4")
    assert int4.weights == "int4" and int4.rules == (QuantRule("lm_head", "int8"),)


def test_prune_recipe():
    cfg = from_dict(PruneConfig, _table("prune-35.toml", "prune"), source="prune-35")
    assert cfg == PruneConfig(flops_reduction=0.35, calibration_batches=8)


@pytest.mark.parametrize(
    "table,field",
    [
        ({"weights": "int3"}, "weights"),
        ({"group_size": 0}, "group_size"),
        ({"activations": "fp8"}, "activations"),
        ({"rules": [{"pattern": "(", "weights": "none"}]}, "rules[0].pattern"),
        ({"rules": [{"pattern": "x", "weights": "int2"}]}, "rules[0].weights"),
        ({"bits": 8}, "bits"),
    ],
)
def test_bad_quant_tables_name_the_field(table, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        from_dict(QuantConfig, table, source="recipe")

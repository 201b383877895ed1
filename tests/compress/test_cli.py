"""`python -m train qat|prune|export` end to end on tiny models, and the compression recipes."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.compress import decoder_flops
from autoglm_jax.config import ConfigError
from autoglm_jax.config._common import from_dict
from autoglm_jax.config.quant import PruneConfig, QuantConfig
from autoglm_jax.families import get_family
from autoglm_jax.quant import qat_model, weight_bytes
from autoglm_jax.training.compress import CompressRecipe, load_compress_recipe
from autoglm_jax.training.recipe import TrainRecipe
from train.__main__ import main

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"
SMALL = [
    "--data.seq-len",
    "32",
    "--data.batch-size",
    "4",
    "--checkpoint.every",
    "1000",
    "--checkpoint.no-async-save",
    "--no-progress",
]


def np_init(name, seed=0):
    """Random tiny weights drawn by numpy, shaped by eval_shape (no init compile)."""
    import flax.linen as nn

    cfg = ag.load_config(name)
    arch = get_family(cfg.model_type, "test")
    module = arch.build(cfg)
    abstract = nn.unbox(ag.abstract_params(module, arch.init_args(cfg)))
    rng = np.random.default_rng(seed)

    def one(path, x):
        leaf = str(path[-1].key)
        v = (
            np.ones(x.shape)
            if leaf == "scale"
            else np.zeros(x.shape)
            if leaf == "bias"
            else rng.normal(0.0, 0.02, x.shape)
        )
        return jnp.asarray(v, x.dtype)

    return ag.Model(cfg, jax.tree_util.tree_map_with_path(one, abstract), module, random_init=True)


def _table(name, section):
    import tomllib

    with open(RECIPES / name, "rb") as f:
        return tomllib.load(f)[section]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A saved tiny model with random (numpy-drawn) weights: the 'float teacher'."""
    d = tmp_path_factory.mktemp("teacher") / "model"
    ag.save(np_init("tiny", seed=0), d)
    return d


def _logits(model, ids):
    return np.asarray(jax.jit(lambda p, x: model.module.apply({"params": p}, x))(model.params, ids))


IDS = jnp.asarray(np.random.RandomState(0).randint(0, 400, (2, 11)), jnp.int32)


@pytest.mark.parametrize(
    "name,quant,prune",
    [
        ("qat-int8.toml", True, False),
        ("qat-int4.toml", True, False),
        ("prune-35.toml", False, True),
    ],
)
def test_loader_accepts_the_compression_recipes(name, quant, prune):
    r = load_compress_recipe(RECIPES / name)
    assert isinstance(r, CompressRecipe) and isinstance(r, TrainRecipe)
    assert (r.quant is not None) == quant and (r.prune is not None) == prune
    if quant:
        assert r.quant == from_dict(QuantConfig, _table(name, "quant"), source=name)
    if prune:
        assert r.prune == from_dict(PruneConfig, _table(name, "prune"), source=name)
    # the training part is the trainer's own, with the same nested overrides
    r2 = load_compress_recipe(
        RECIPES / name, {"optim": {"lr": 1e-2}, "steps": 7, "quant": {"weight_clip": 0.9}}
    )
    assert r2.optim.lr == 1e-2 and r2.steps == 7 and r2.quant.weight_clip == 0.9
    assert r2.train_recipe().distill == r.distill
    assert CompressRecipe.of(r.train_recipe(), r.quant, r.prune) == r


def test_loader_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('steps = 3\n[quant]\nweights = "int3"\n')
    with pytest.raises(ConfigError, match="weights"):
        load_compress_recipe(bad)
    bad.write_text("steps = 3\n[prune]\nratio = 0.3\n")
    with pytest.raises(ConfigError, match="ratio"):
        load_compress_recipe(bad)
    bad.write_text("steps = 3\n[optim]\nlearning_rate = 0.3\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_compress_recipe(bad)
    assert load_compress_recipe(RECIPES / "tiny-pretrain.toml").quant is None


def test_float_commands_refuse_a_quant_recipe(capsys):
    with pytest.raises(SystemExit) as e:
        main(["distill", "--recipe", str(RECIPES / "qat-int8.toml"), "--steps", "1"])
    assert "train qat" in str(e.value.code)


def test_qat_then_export_equals_the_qat_forward(tmp_path, teacher_dir):
    run = tmp_path / "qat"
    main(
        [
            "qat",
            "--recipe",
            str(RECIPES / "qat-int8.toml"),
            "--run-dir",
            str(run),
            "--steps",
            "3",
            "--log-every",
            "1",
            "--model.init-from",
            str(teacher_dir),
            "--distill.teacher",
            str(teacher_dir),
            *SMALL,
        ]
    )
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(np.isfinite(s["kl"]) and s["kl"] >= 0 for s in steps)  # distilled
    trained = ag.load(run / "model")
    start = ag.load(teacher_dir)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), trained.params, start.params)
    assert max(jax.tree.leaves(moved)) > 0  # it trained
    assert trained.config.text.quant is None  # the QAT checkpoint is the float tree

    main(
        [
            "export",
            "--qat-checkpoint",
            str(run / "model"),
            "--format",
            "int8",
            "--recipe",
            str(RECIPES / "qat-int8.toml"),
        ]
    )
    out = run / "model-int8"
    small = ag.load(out)
    quant = load_compress_recipe(RECIPES / "qat-int8.toml").quant
    assert small.config.text.quant == quant
    assert small.params["layers_0"]["mlp"]["down_proj"]["kernel"].dtype == jnp.int8
    want = _logits(qat_model(trained, quant), IDS)
    got = _logits(small, IDS)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.abs(got - _logits(trained, IDS)).max() > 1e-5  # and quantization did something
    b = weight_bytes(ag.load(out, dtype=jnp.bfloat16))
    assert b["quantized"] <= 0.52 * b["quantized_bf16"]


def test_export_int4_with_the_recipe_rules(tmp_path, teacher_dir, capsys):
    out = tmp_path / "int4"
    main(
        [
            "export",
            "--qat-checkpoint",
            str(teacher_dir),
            "--format",
            "int4",
            "--recipe",
            str(RECIPES / "qat-int4.toml"),
            "--out",
            str(out),
        ]
    )
    quant = load_compress_recipe(RECIPES / "qat-int4.toml").quant
    small = ag.load(out)
    assert small.config.text.quant == quant
    np.testing.assert_allclose(
        _logits(small, IDS), _logits(qat_model(ag.load(teacher_dir), quant), IDS), atol=1e-5, rtol=0
    )
    with pytest.raises(SystemExit) as e:  # the recipe's format must match --format
        main(
            [
                "export",
                "--qat-checkpoint",
                str(teacher_dir),
                "--format",
                "int8",
                "--recipe",
                str(RECIPES / "qat-int4.toml"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
    assert "int4" in str(e.value.code)


def test_export_scope_all_quantizes_the_encoders_of_a_composite(tmp_path):
    src = tmp_path / "mm"
    ag.save(ag.init("tiny-mm", seed=0, init="fan_in"), src)
    out = tmp_path / "mm-int8"
    main(
        [
            "export",
            "--qat-checkpoint",
            str(src),
            "--format",
            "int8",
            "--scope",
            "all",
            "--out",
            str(out),
        ]
    )
    small = ag.load(out)
    assert small.config.text.quant == QuantConfig(weights="int8", scope="all")
    assert small.params["visual"]["patch_embed"]["kernel"].dtype == jnp.int8
    assert small.params["fusion"]["blocks_0"]["q_proj"]["kernel"].dtype == jnp.int8
    assert small.params["language_model"]["lm_head"]["kernel"].dtype == jnp.float32


def test_prune_writes_a_smaller_loadable_model(tmp_path, teacher_dir):
    run = tmp_path / "prune"
    main(
        [
            "prune",
            "--recipe",
            str(RECIPES / "prune-35.toml"),
            "--run-dir",
            str(run),
            "--distill.teacher",
            str(teacher_dir),
            "--prune.calibration-batches",
            "2",
            *SMALL,
        ]
    )
    pruned = ag.load(run / "pruned")
    full = ag.load(teacher_dir)
    reduction = 1 - decoder_flops(pruned.config.text) / decoder_flops(full.config.text)
    assert abs(reduction - 0.35) <= 0.02, reduction
    n = lambda m: sum(x.size for x in jax.tree.leaves(m.params))  # noqa: E731
    assert n(pruned) < n(full)
    logits = _logits(pruned, IDS)
    assert logits.shape == (2, 11, full.config.text.vocab_size) and np.isfinite(logits).all()
    # the recovery step the recipe documents reads it: model.init_from = <run_dir>/pruned
    assert load_compress_recipe(RECIPES / "prune-35.toml").model.init_from.endswith("/pruned")

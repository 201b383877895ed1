"""The llama family (LlamaForCausalLM on the GLM decoder) against Hugging Face transformers."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.config import ConfigError
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams
from autoglm_jax.families import count_params_by_stack
from tests.hf_fixtures import hf_logits


@dataclasses.dataclass(frozen=True)
class LlamaCase:
    name: str
    num_heads: int
    num_kv_heads: int
    hidden_size: int = 40
    intermediate_size: int = 37
    head_dim: int | None = None  # None: hidden_size // num_heads, as LlamaConfig
    vocab_size: int = 97
    layers: int = 2
    tie: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6


CASES = [
    LlamaCase("gqa-untied", 4, 2, rope_theta=50000.0, rms_norm_eps=1e-3),  # head_dim 10
    LlamaCase("mqa-tied", 3, 1, hidden_size=48, intermediate_size=23, tie=True, rms_norm_eps=1e-2),
    # LlamaConfig wants heads | hidden_size even with an explicit head_dim (here not 36 // 6).
    LlamaCase("gqa-head-dim-18", 6, 2, hidden_size=36, head_dim=18, rope_theta=1e6, layers=3),
]


def make_hf_model(case: LlamaCase, seed: int = 0):
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    extra = {} if case.head_dim is None else {"head_dim": case.head_dim}
    cfg = tf.LlamaConfig(
        vocab_size=case.vocab_size,
        hidden_size=case.hidden_size,
        intermediate_size=case.intermediate_size,
        num_hidden_layers=case.layers,
        num_attention_heads=case.num_heads,
        num_key_value_heads=case.num_kv_heads,
        rope_parameters={"rope_type": "default", "rope_theta": case.rope_theta},
        rms_norm_eps=case.rms_norm_eps,
        tie_word_embeddings=case.tie,
        pad_token_id=0,
        bos_token_id=5,
        initializer_range=0.2,  # logits of order 1, so a slip is far above the tolerance
        **extra,
    )
    model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start at 1: perturb so a slip shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def hf_case(request, tmp_path_factory):
    case = request.param
    directory = tmp_path_factory.mktemp(case.name)
    model = make_hf_model(case)
    model.save_pretrained(directory)
    return case, directory, model


def _ids(case, batch=2, length=11, seed=0):
    return np.random.RandomState(seed).randint(0, case.vocab_size, (batch, length))


def _apply(m, ids):
    return np.asarray(m.module.apply({"params": m.params}, jnp.asarray(ids)))


def test_config_reads_llama_fields(hf_case):
    case, directory, model = hf_case
    cfg = ag.load_config(directory)
    c = cfg.text
    assert (cfg.model_type, cfg.hf_architecture) == ("llama", "LlamaForCausalLM")
    assert c.head_dim == (case.head_dim or case.hidden_size // case.num_heads)
    assert (c.num_heads, c.num_kv_heads) == (case.num_heads, case.num_kv_heads)
    assert (c.rope_theta, c.rms_norm_eps) == (case.rope_theta, case.rms_norm_eps)
    assert (c.partial_rotary_factor, c.attention_bias, c.variant) == (1.0, False, "glm")
    assert c.tie_word_embeddings == case.tie
    assert count_params_by_stack(cfg)["total"] == c.num_params == model.num_parameters()


def test_logits_match_transformers_fp32(hf_case):
    case, directory, model = hf_case
    m = ag.load(directory)
    assert m.config.model_type == "llama"
    ids = _ids(case)
    err = np.abs(_apply(m, ids) - hf_logits(model, ids)).max()
    assert err < 1e-4, err


def test_hub_spelling_config_loads_the_same(hf_case, tmp_path):
    case, directory, model = hf_case
    cfg = json.loads((directory / "config.json").read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    cfg["rope_scaling"] = None
    if case.head_dim is None:  # hub files often leave the derived head_dim out
        del cfg["head_dim"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").symlink_to(directory / "model.safetensors")
    ids = _ids(case)
    np.testing.assert_array_equal(_apply(ag.load(tmp_path), ids), _apply(ag.load(directory), ids))


def test_export_hf_round_trip_is_identical(hf_case, tmp_path):
    import torch
    import transformers as tf

    case, directory, model = hf_case
    ag.export_hf(ag.load(directory), tmp_path / "out", max_shard_bytes=20_000)  # several shards
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    assert back.config.tie_word_embeddings == case.tie

    def ids(config, field):  # one id or a list of them, as transformers allows
        value = getattr(config, field)
        return value if isinstance(value, list) else [value]

    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert ids(back.config, field) == ids(model.config, field), field
    want, got = model.state_dict(), back.state_dict()
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    ids = _ids(case)
    np.testing.assert_array_equal(hf_logits(back, ids), hf_logits(model, ids))


# One case: the engine path is the GLM decoder's; this one has GQA, an explicit head_dim and
# head_dim >= 16 (the paged-attention kernel's minimum).
@pytest.mark.parametrize("hf_case", [CASES[2]], ids=[CASES[2].name], indirect=True)
def test_engine_greedy_equals_transformers_generate(hf_case):
    import torch

    case, directory, model = hf_case
    m = ag.load(directory)
    engine = Engine(
        m, EngineConfig(max_model_len=64, max_num_seqs=4, max_num_batched_tokens=32, page_size=8)
    )
    prompts = [
        list(map(int, p)) for p in np.random.RandomState(1).randint(1, case.vocab_size, (3, 9))
    ]
    prompts[1] = prompts[1][:4]  # ragged
    new = 5
    outs = engine.generate(
        prompts, SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    )
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )
        assert out.token_ids == ref[0, len(prompt) :].tolist()


def _write_config(tmp_path, drop=(), **changes):
    cfg = {
        "model_type": "llama",
        "vocab_size": 97,
        "hidden_size": 40,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **changes,
    }
    for key in drop:
        del cfg[key]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        (
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 5e5,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                }
            },
            "rope_type",
        ),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type"),
        ({"rope_theta": "big"}, "rope_theta"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"head_dim": 7}, "head_dim"),
        ({"num_key_value_heads": 3}, "num_kv_heads"),
    ],
)
def test_unsupported_fields_are_refused_by_name(tmp_path, changes, field):
    path = _write_config(tmp_path, **changes)
    with pytest.raises(ConfigError, match=f"{path}.*`{field}`"):
        ag.load_config(path)


def test_missing_field_is_named(tmp_path):
    path = _write_config(tmp_path, drop=("intermediate_size",))
    with pytest.raises(ConfigError, match=f"{path}.*missing required field `intermediate_size`"):
        ag.load_config(path)


def test_plain_config_and_defaults(tmp_path):
    c = ag.load_config(_write_config(tmp_path)).text
    assert (c.head_dim, c.rms_norm_eps, c.rope_theta) == (10, 1e-6, 10000.0)
    assert c.max_position_embeddings == 2048 and not c.tie_word_embeddings
    assert c.eos_token_ids == (2,) and c.pad_token_id is None  # LlamaConfig's defaults
    assert not c.attention_bias


def test_glm_shaped_config_is_not_a_llama_model():
    cfg = ag.load_config("tiny")
    with pytest.raises(ConfigError, match="partial_rotary_factor|attention_bias|variant"):
        dataclasses.replace(cfg, model_type="llama")

"""The qwen2 family (Qwen2ForCausalLM on the GLM decoder) against Hugging Face transformers."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.config import ConfigError
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams
from autoglm_jax.families.qwen2_keys import rotary_order
from tests.hf_fixtures import hf_logits


@dataclasses.dataclass(frozen=True)
class QwenCase:
    name: str
    num_heads: int
    num_kv_heads: int
    hidden_size: int = 40
    intermediate_size: int = 37
    head_dim: int | None = None  # None: hidden_size // num_heads, as Qwen2Config
    vocab_size: int = 97
    layers: int = 2
    tie: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6


CASES = [
    QwenCase("gqa-untied", 4, 2, rope_theta=50000.0, rms_norm_eps=1e-3),
    QwenCase("mha-tied", 3, 3, hidden_size=48, intermediate_size=23, tie=True, rms_norm_eps=1e-2),
    QwenCase("gqa-head-dim-18", 6, 2, hidden_size=33, head_dim=18, rope_theta=1e6, layers=3),
]


def make_hf_model(case: QwenCase, seed: int = 0):
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    extra = {} if case.head_dim is None else {"head_dim": case.head_dim}
    cfg = tf.Qwen2Config(
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
    model = tf.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: perturb so a slip shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
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


def test_rotary_order_pairs_half_split_dims():
    assert rotary_order(6).tolist() == [0, 3, 1, 4, 2, 5]


def test_config_reads_qwen2_fields(hf_case):
    case, directory, model = hf_case
    c = ag.load_config(directory).text
    assert c.head_dim == (case.head_dim or case.hidden_size // case.num_heads)
    assert (c.num_heads, c.num_kv_heads) == (case.num_heads, case.num_kv_heads)
    assert (c.rope_theta, c.rms_norm_eps) == (case.rope_theta, case.rms_norm_eps)
    assert (c.partial_rotary_factor, c.attention_bias, c.variant) == (1.0, True, "glm")
    assert c.tie_word_embeddings == case.tie


def test_logits_match_transformers_fp32(hf_case):
    case, directory, model = hf_case
    m = ag.load(directory)
    assert m.config.model_type == "qwen2"
    ids = _ids(case)
    err = np.abs(_apply(m, ids) - hf_logits(model, ids)).max()
    assert err < 1e-4, err


def test_hub_spelling_config_loads_the_same(hf_case, tmp_path):
    case, directory, model = hf_case
    cfg = json.loads((directory / "config.json").read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    cfg.pop("layer_types", None)
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
    assert type(back).__name__ == "Qwen2ForCausalLM"

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


def test_engine_greedy_equals_transformers_generate(hf_case):
    import torch

    case, directory, model = hf_case
    m = ag.load(directory)
    if m.config.text.head_dim < 16:
        pytest.skip("the paged-attention kernel takes head_dim >= 16")
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


def _write_config(tmp_path, **changes):
    cfg = {
        "model_type": "qwen2",
        "vocab_size": 97,
        "hidden_size": 40,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **changes,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_type"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"head_dim": 7}, "head_dim"),
    ],
)
def test_unsupported_fields_are_refused_by_name(tmp_path, changes, field):
    path = _write_config(tmp_path, **changes)
    with pytest.raises(ConfigError, match=f"{path}.*`{field}`"):
        ag.load_config(path)


def test_plain_config_and_defaults(tmp_path):
    c = ag.load_config(_write_config(tmp_path)).text
    assert (c.head_dim, c.rms_norm_eps, c.rope_theta) == (10, 1e-6, 10000.0)
    assert c.max_position_embeddings == 32768 and not c.tie_word_embeddings


def test_glm_shaped_config_is_not_a_qwen2_model():
    cfg = ag.load_config("tiny")
    with pytest.raises(ConfigError, match="partial_rotary_factor|attention_bias|variant"):
        dataclasses.replace(cfg, model_type="qwen2")

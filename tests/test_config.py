import json

import pytest

import autoglm_jax as ag
from autoglm_jax.config import ConfigError, preset_names
from autoglm_jax.families.glm import text_config_from_hf


def test_every_shipped_preset_parses():
    names = preset_names()
    assert {"tiny", "glm-4-9b", "glm-4-9b-0414"} <= set(names)
    for name in names:
        cfg = ag.load_config(name)
        assert cfg.text is None or cfg.text.num_params > 0


def test_glm_4_9b_preset_facts():
    t = ag.load_config("glm-4-9b").text
    assert (t.d_model, t.ffw_dim, t.num_layers, t.num_heads, t.num_kv_heads, t.head_dim) == (
        4096,
        13696,
        40,
        32,
        2,
        128,
    )
    assert t.queries_per_kv_head == 16 and t.rotary_dim == 64
    assert t.num_params == 9_399_951_360
    assert ag.load_config("glm-4-9b-0414").text.sandwich_norm


HUB_GLM = {  # the spelling of the hub's glm-4-9b-chat-hf config.json
    "model_type": "glm",
    "vocab_size": 151552,
    "hidden_size": 4096,
    "intermediate_size": 13696,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1.5625e-07,
    "attention_bias": True,
    "max_position_embeddings": 131072,
    "hidden_act": "silu",
    "eos_token_id": [151329, 151336, 151338],
    "pad_token_id": 151329,
    "tie_word_embeddings": False,
}


def test_from_hf_both_spellings_agree():
    hub = text_config_from_hf(HUB_GLM)
    v5 = dict(HUB_GLM)
    del v5["rope_theta"], v5["partial_rotary_factor"]
    v5["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
    }
    assert text_config_from_hf(v5) == hub
    assert hub == ag.load_config("glm-4-9b").text.replace(param_dtype="float32", dtype="float32")


def test_from_hf_reads_other_theta_and_glm4v_text():
    cfg = dict(HUB_GLM, rope_theta=5e6)
    assert text_config_from_hf(cfg).rope_theta == 5e6
    glm4v = {
        "model_type": "glm4v",
        "text_config": {
            "vocab_size": 151552,
            "hidden_size": 4096,
            "intermediate_size": 13696,
            "num_hidden_layers": 40,
            "num_attention_heads": 32,
            "num_key_value_heads": 2,
            "rope_theta": 10000,
            "partial_rotary_factor": 0.5,
            "rope_scaling": {"type": "default", "mrope_section": [8, 12, 12]},
            "rms_norm_eps": 1e-5,
        },
    }
    t = text_config_from_hf(glm4v)
    assert t.mrope_section == (8, 12, 12) and t.head_dim == 128 and t.sandwich_norm


@pytest.mark.parametrize(
    "change, words",
    [
        ({"model_type": "llama"}, "model_type"),
        ({"num_key_value_heads": 3}, "num_kv_heads"),
        ({"partial_rotary_factor": 1.5}, "partial_rotary_factor"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_theta": "big"}, "rope_theta"),
        ({"num_hidden_layers": 0}, "num_layers"),
    ],
)
def test_from_hf_rejects_invalid(change, words):
    with pytest.raises(ConfigError, match=words):
        text_config_from_hf(dict(HUB_GLM, **change), source="x/config.json")


def test_missing_field_and_bad_files(tmp_path):
    cfg = dict(HUB_GLM)
    del cfg["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size"):
        text_config_from_hf(cfg)
    bad = tmp_path / "bad.toml"
    bad.write_text('model_type = "glm"\n[text]\nvocab_size = 10\nbogus = 1\n')
    with pytest.raises(ConfigError, match=r"bad.toml.*bogus"):
        ag.load_config(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        ag.load_config("no-such-preset")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        ag.load_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(HUB_GLM, model_type="bert")))
    with pytest.raises(ConfigError, match="bert"):
        ag.load_config(tmp_path)

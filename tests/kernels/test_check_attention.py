"""`python -m infer check-attention`, the kernels' correctness check for a GPU, run on CPU in
interpret mode: a correct kernel passes every case, and a wrong one is caught and named."""

import json

import jax.numpy as jnp
import pytest

from infer import check_attention as ca


def test_kernels_pass_and_the_result_is_written(tmp_path, capsys):
    args = ca.CheckAttentionArgs(heads=("4x1x80",), kv_dtypes=("float32", "int8"), out_dir=tmp_path)
    rows = ca.run_check_attention(args)
    assert [(r["kernel"], r["kv_dtype"]) for r in rows] == [
        ("ragged", "float32"),
        ("ragged", "int8"),
        ("decode", "float32"),
        ("decode", "int8"),
    ]
    assert all(r["ok"] and r["kind"] == "MQA" for r in rows)
    assert rows[0]["max_abs_error"] < 1e-5  # float32 against the float64 reference
    saved = json.loads((tmp_path / "check_attention.json").read_text())
    assert saved["interpret"] is True and len(saved["rows"]) == 4
    assert "4 of 4 cases pass" in capsys.readouterr().out


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda out: out.at[0].add(0.01), "| 1.00e-02 | 0.001 | FAILED |"),  # wrong values
        (lambda out: out.at[-1].set(1.0), "padding rows not zero"),  # writes a padding row
        (lambda out: out.at[0, 0, 0].set(jnp.nan), "non-finite output"),  # leaks a masked NaN
    ],
)
def test_a_wrong_kernel_fails_the_check(monkeypatch, tmp_path, capsys, damage, reason):
    real = ca.ragged_paged_attention
    monkeypatch.setattr(ca, "ragged_paged_attention", lambda *a, **kw: damage(real(*a, **kw)))
    args = ca.CheckAttentionArgs(
        heads=("4x2x64",), kv_dtypes=("float32",), kernels=("decode",), out_dir=tmp_path
    )
    with pytest.raises(SystemExit) as e:
        ca.run_check_attention(args)
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert reason in out and "0 of 1 cases pass" in out


def test_head_layouts_are_parsed_or_refused():
    assert ca.parse_heads("32x2x128") == (32, 2, 128)
    assert [ca.head_kind(n, k) for n, k in ((32, 2), (8, 1), (4, 4))] == ["GQA 16", "MQA", "MHA"]
    with pytest.raises(SystemExit, match="--heads: '32x2' is not"):
        ca.parse_heads("32x2")
    with pytest.raises(SystemExit, match="6 query heads do not split into 4 KV heads"):
        ca.parse_heads("6x4x64")

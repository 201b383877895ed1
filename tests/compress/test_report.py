"""`python -m train report` end to end at toy sizes: every row trained, exported, measured.

On a text task with the tiny text preset, not the command's default image task: the same
code but the two "every stack" rows, at under half the time (this was the suite's longest
test at ~290 s). Scope-all exports of a composite are tested in test_cli.py and
test_multimodal_compress.py; `stack_bytes` on one here."""

import json

import pytest

from train.report import ReportOptions, _publish, run_report
from train.report_sizes import stack_bytes


@pytest.mark.slow
def test_report_on_a_text_task(tmp_path):
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text("# Benchmarks\n\nearlier text\n")
    o = ReportOptions(
        out_dir=str(tmp_path / "r"),
        preset="tiny",
        tasks=("copy",),
        docs=str(docs),
        teacher_steps=3,
        qat_steps=2,
        recover_steps=2,
        seq_len=48,
        batch_size=4,
        eval_batches=2,
        decode_prompts=2,
        decode_tokens=4,
        project_to="tiny-mm",
    )
    r = run_report(o)
    out = tmp_path / "r"
    assert json.loads((out / "report.json").read_text())["rows"] == r["rows"]
    md = (out / "report.md").read_text()
    assert "synthetic **text** task (copy" in md
    assert (out / "report.png").stat().st_size > 1000
    names = [row["model"] for row in r["rows"]]
    assert names == [
        "teacher (float)",
        "teacher + QAT recipe in float (control)",
        "int8 QAT",
        "int4 QAT",
        "35%-pruned + distilled",
        "35%-pruned + distilled + int8 QAT",
    ]
    for row in r["rows"]:
        assert row["model"] in md
        assert 0.0 <= row["accuracy"] <= 1.0 and row["loss"] > 0
        assert row["decode_tokens_per_s"] > 0 and row["kv_bytes_per_token"] > 0
        if "qat_forward_accuracy" in row:  # export changes storage, not numbers
            assert row["qat_forward_accuracy"] == row["accuracy"], row["model"]
            assert abs(row["qat_forward_loss"] - row["loss"]) <= 1e-5 * row["loss"], row["model"]
    t, c, q8, q4, p, pq = r["rows"]
    assert c["weight_bytes"] == t["weight_bytes"] and "qat_forward_accuracy" not in c
    assert q4["weight_bytes"] < q8["weight_bytes"] < t["weight_bytes"]
    assert pq["weight_bytes"] < p["weight_bytes"] < t["weight_bytes"]
    assert pq["decoder_flops"] == p["decoder_flops"] < t["decoder_flops"]
    layer = "layers_0"  # a text model's stacks are its top-level modules
    assert q8["stack_bytes"][layer] < t["stack_bytes"][layer] == c["stack_bytes"][layer]
    assert abs(r["prune"]["achieved"] - 0.35) <= 0.02
    assert r["eval_answers"] == 8
    assert [g["model"] for g in r["goals"]] == [pq["model"]]
    proj = {p["model"]: p["share"] for p in r["projection"]["rows"]}
    assert proj["float"] == 1.0
    assert proj["35%-pruned + int8, every stack"] < proj["35%-pruned + int8"] < proj["int8"]
    assert "`tiny-mm`'s shapes" in md
    assert r["goal"]["weight_share"] == pq["weight_share"]
    assert md.count("not met") + md.count("**met**") == 1
    # published into the docs file, after what was there; a second publish replaces it
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nearlier text\n") and md in text
    assert (docs.parent / "compression-report.png").exists()
    _publish(md, out / "report.png", docs)  # publishing again replaces the block
    assert docs.read_text() == text and text.count("compression-report:begin") == 1
    with pytest.raises(FileExistsError):
        run_report(o)


def test_stack_bytes_splits_the_decoder_and_names_every_other_stack():
    import numpy as np

    params = {
        "language_model": {
            "layers_0": {"w": np.zeros((4, 8), np.float32)},  # 128 bytes
            "layers_1": {"w": np.zeros((4, 8), np.int8)},  # 32
            "embed_tokens": {"embedding": np.zeros((10, 8), np.float32)},  # 320
        },
        "visual": {"blocks": {"w": np.zeros((2, 2), np.int8)}},  # 4
        "audio": {"w": np.zeros(3, np.float32)},  # 12
    }
    assert stack_bytes(params) == {
        "decoder layers": 160,
        "embeddings, lm_head, norm": 320,
        "visual": 4,
        "audio": 12,
    }


def test_report_figures_come_only_from_the_run():
    """The report code reads no file (no report.json, report.md or hand-edited figures can
    flow into the docs), and only run_report publishes."""
    import ast
    import inspect

    import train.report as report

    tree = ast.parse(inspect.getsource(report))
    json_reads = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in ("load", "loads")
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "json"
    ]
    assert not json_reads, [ast.unparse(n) for n in json_reads]
    file_reads = {
        f.name: [
            ast.unparse(n)
            for n in ast.walk(f)
            if isinstance(n, ast.Call)
            and (
                (isinstance(n.func, ast.Attribute) and n.func.attr in ("read_text", "read_bytes"))
                or (isinstance(n.func, ast.Name) and n.func.id == "open")
            )
        ]
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef)
    }
    # The one read: _publish reads the docs file it splices the table into.
    assert {k: v for k, v in file_reads.items() if v} == {"_publish": ["path.read_text()"]}
    callers = [
        f.name
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef)
        and any(isinstance(n, ast.Name) and n.id == "_publish" for n in ast.walk(f))
    ]
    assert callers == ["run_report"]
    assert "remeasured" not in inspect.getsource(report)

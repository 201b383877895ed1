"""End-to-end runs of the inference CLI on the tiny preset (random weights)."""

import json
import re
import subprocess
import sys

import pytest


def test_generate_cli_smoke_run_from_jsonl(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '"Hello"\n{"prompt": "Bonjour"}\n{"messages": [{"role": "user", "content": "hi"}]}\n'
    )
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "infer",
            "generate",
            "--model",
            "tiny",
            "--prompts-file",
            str(prompts),
            "--output",
            str(out),
            "--max-tokens",
            "5",
            "--max-model-len",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SMOKE RUN" in proc.stderr and "RANDOM weights" in proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["token_ids"]) == 5 for r in rows)


def test_generate_cli_rejects_unknown_model_and_bad_jsonl(tmp_path):
    from infer.__main__ import main

    with pytest.raises(SystemExit, match="not a directory, a shipped model"):
        main(["generate", "--model", "no-such-model"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{broken\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:2"):
        main(["generate", "--prompts-file", str(bad)])


def test_every_infer_command_parses_its_flags(capsys):
    from infer.__main__ import commands, main

    names = list(commands())
    assert {"generate", "serve", "agent", "agent-eval"} <= set(names)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    listed = capsys.readouterr().out
    assert e.value.code == 0 and all(c in listed for c in names)
    for command in names:  # a flag defined twice breaks only that command's parser
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0, command
        assert "usage" in capsys.readouterr().out, command


def test_every_serve_flag_is_in_the_readme_and_serving_tables(capsys):
    """The flag tables of README.md and docs/serving.md are written by hand: a flag added to
    the server (an EngineConfig field becomes one) must be listed in both."""
    from pathlib import Path

    from infer.__main__ import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", capsys.readouterr().out))
    # a boolean's --no-X is listed as its --X
    flags = {f.replace("--no-", "--", 1) for f in flags} - {"--help"}
    assert {"--async-scheduling", "--block-size", "--warmup-image-sizes"} <= flags
    root = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/serving.md"):
        rows = [line for line in (root / doc).read_text().splitlines() if line.startswith("| `--")]
        missing = {f for f in flags if not any(f"`{f}`" in r or f"`{f} " in r for r in rows)}
        assert not missing, f"{doc} lacks {sorted(missing)}"


def test_bench_cli_tiny(tmp_path):
    from infer.bench import BenchArgs, run_bench
    from infer.flags import EngineFlags, ModelFlags

    res = run_bench(
        BenchArgs(
            model=ModelFlags(model="tiny"),
            num_requests=6,
            prompt_len=24,
            output_len=6,
            engine=EngineFlags(max_num_seqs=8, max_num_batched_tokens=64),
            baseline_requests=2,
            static_batch_size=3,
            static_batches=1,
            hf_baseline=True,
            out_dir=tmp_path,
        )
    )
    assert res["continuous"]["output_tokens"] == 36
    assert res["one_at_a_time"]["output_tokens"] == 12
    assert res["hf_generate"]["output_tokens"] == 18, res["hf_generate"]
    assert (tmp_path / "bench.json").exists() and (tmp_path / "bench.png").exists()


def test_quantize_flag_stores_the_decoder_in_int8_at_load():
    import io
    import re

    import jax
    import jax.numpy as jnp
    import pytest

    from infer.flags import ModelFlags, load_model

    log = io.StringIO()
    model = load_model(ModelFlags(model="tiny", quantize="int8", compilation_cache_dir=""), log=log)
    kinds = {
        jax.tree_util.keystr(path): leaf.dtype
        for path, leaf in jax.tree_util.tree_leaves_with_path(model.params)
    }
    int8 = [k for k, dtype in kinds.items() if dtype == jnp.int8]
    assert int8 and all("layers_" in k and k.endswith("['kernel']") for k in int8)
    assert not any("lm_head" in k or "embed" in k for k in int8)  # they stay float
    assert model.config.text.quant is not None and "quantized the decoder to int8" in log.getvalue()
    before, after = re.search(r"weights ([\d,]+) -> ([\d,]+) bytes", log.getvalue()).groups()
    assert int(after.replace(",", "")) < int(before.replace(",", ""))
    shipped = ModelFlags(quantize="int8", compilation_cache_dir="")  # already int8
    with pytest.raises(SystemExit, match="--quantize int8: the model is already quantized"):
        load_model(shipped, log=io.StringIO())


def test_chat_streams_two_turns_and_refuses_media_for_text_models(tmp_path):
    import io
    from pathlib import Path

    from infer.flags import EngineFlags, ModelFlags
    from infer.generate import ChatArgs, SamplingArgs, run_chat

    out = io.StringIO()
    args = ChatArgs(
        model=ModelFlags(model="tiny"),
        engine=EngineFlags(
            max_model_len=256, num_gpu_blocks_override=32, max_num_batched_tokens=64
        ),
        sampling=SamplingArgs(max_tokens=4),
    )
    run_chat(args, stdin=io.StringIO("hello\nagain\n\n"), out=out, log=io.StringIO())
    assert out.getvalue().count("> ") == 3  # two answered turns, then the empty line ends it
    with pytest.raises(SystemExit, match="does not take images"):
        run_chat(
            ChatArgs(
                image=(Path(tmp_path / "x.png"),),
                model=ModelFlags(model="tiny"),
                engine=EngineFlags(max_model_len=256, max_num_batched_tokens=64),
            ),
            stdin=io.StringIO(""),
            out=io.StringIO(),
            log=io.StringIO(),
        )

"""Each way a checkpoint can be wrong gives an error that names the problem, file and key."""

import json
import shutil

import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.checkpoint.safetensors_io import SafetensorsFile, save_file
from tests.hf_fixtures import CASES, save_hf_model


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("good")
    save_hf_model(CASES[0], directory)
    return directory


@pytest.fixture
def bad_dir(good_dir, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(good_dir, directory)
    return directory


def _rewrite(directory, edit):
    f = SafetensorsFile(directory / "model.safetensors")
    tensors = {k: f.get(k) for k in f.keys()}
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")


def test_missing_key(bad_dir):
    _rewrite(bad_dir, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(
        ag.CheckpointError, match=r"missing key.*model\.layers\.1\.mlp\.down_proj\.weight"
    ):
        ag.load(bad_dir)


def test_unexpected_key(bad_dir):
    _rewrite(
        bad_dir, lambda t: t.__setitem__("model.layers.0.extra.weight", np.zeros(3, np.float32))
    )
    with pytest.raises(
        ag.CheckpointError,
        match=r"unexpected key.*model\.layers\.0\.extra\.weight.*model\.safetensors",
    ):
        ag.load(bad_dir)


def test_shape_mismatch(bad_dir):
    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((12, 40), np.float32)

    _rewrite(bad_dir, edit)
    with pytest.raises(
        ag.CheckpointError, match=r"model\.safetensors.*k_proj\.weight.*shape mismatch.*\[12, 40\]"
    ):
        ag.load(bad_dir)


def test_unsupported_model_type(bad_dir):
    cfg = json.loads((bad_dir / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (bad_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ag.ConfigError, match=r"config\.json.*unsupported model_type 'mistral'"):
        ag.load(bad_dir)


def test_truncated_safetensors(bad_dir):
    path = bad_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ag.CheckpointError, match=r"model\.safetensors.*truncated"):
        ag.load(bad_dir)


def test_corrupt_header(bad_dir):
    path = bad_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"\xff" * 12
    path.write_bytes(bytes(data))
    with pytest.raises(ag.CheckpointError, match=r"model\.safetensors.*corrupt"):
        ag.load(bad_dir)


def test_missing_shard_named(tmp_path):
    save_hf_model(CASES[0], tmp_path, max_shard_size="20KB")
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(ag.CheckpointError, match=victim.name):
        ag.load(tmp_path)


def test_no_config_and_not_a_dir(tmp_path):
    with pytest.raises(ag.CheckpointError, match="not a checkpoint directory"):
        ag.load(tmp_path / "nope")
    with pytest.raises(ag.CheckpointError, match="no config.json"):
        ag.load(tmp_path)


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("native") / "good"
    ag.save(ag.init("tiny", seed=0), path)
    return path


def _largest_data_file(params_dir):
    files = [p for p in params_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _truncate(path, size=100):
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda d: _truncate(_largest_data_file(d / "params")),
            r"cannot read parameter\(s\) [^:]*layers_\d+/\w+/\w+/kernel.*damaged or incomplete",
        ),
        (
            lambda d: _largest_data_file(d / "params").unlink(),
            r"cannot read parameter\(s\) [^:]*layers_\d+/\w+/\w+/kernel.*damaged or incomplete",
        ),
        (
            lambda d: _truncate(d / "params" / "_METADATA", 50),
            r"cannot read parameter\(s\) embed_tokens/embedding",
        ),
        (
            lambda d: (d / "autoglm_config.json").write_text(
                (d / "autoglm_config.json").read_text().replace('"ffw_dim": 46', '"ffw_dim": 47')
            ),
            r"parameter layers_0/mlp/down_proj/kernel: stored shape \(46, 72\), but "
            r"autoglm_config.json says \(47, 72\)",
        ),
    ],
)
def test_damaged_native_checkpoint_names_directory_and_parameter(
    native_dir, tmp_path, capfd, damage, expected
):
    """Truncated or deleted Orbax files and shape edits raise CheckpointError naming the
    directory and the parameter, with nothing else printed (no TensorStore dump, no
    'Exception ignored in coroutine')."""
    bad = tmp_path / "bad"
    shutil.copytree(native_dir, bad)
    assert '"ffw_dim": 46' in (bad / "autoglm_config.json").read_text()
    damage(bad)
    capfd.readouterr()
    with pytest.raises(ag.CheckpointError, match=expected) as info:
        ag.load(bad)
    assert str(bad / "params") in str(info.value) and "TensorStore({" not in str(info.value)
    out, err = capfd.readouterr()
    assert "Exception ignored" not in err + out and "Traceback" not in err + out, err[-2000:]

"""Package-level promises: the public API imports, and the library never imports torch or
transformers (they are test-only references)."""

import subprocess
import sys


def test_library_never_imports_torch_or_transformers():
    code = (
        "import sys, pkgutil, importlib, autoglm_jax\n"
        "for m in pkgutil.walk_packages(autoglm_jax.__path__, 'autoglm_jax.'):\n"
        "    if '.serve' in m.name:\n"
        "        continue  # optional extra\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_public_api():
    import autoglm_jax as ag

    for name in ("load", "save", "export_hf", "init", "load_config", "make_mesh", "Model",
                 "ModelConfig", "TextConfig"):
        assert hasattr(ag, name), name
    assert set(ag.__all__) <= set(dir(ag))

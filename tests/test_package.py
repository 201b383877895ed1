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
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_public_api():
    import autoglm_jax as ag

    for name in (
        "load",
        "save",
        "export_hf",
        "init",
        "load_config",
        "make_mesh",
        "Model",
        "ModelConfig",
        "TextConfig",
    ):
        assert hasattr(ag, name), name
    assert set(ag.__all__) <= set(dir(ag))


def test_test_folders_cannot_shadow_installed_packages():
    """tests/ is one package: its folders are `tests.kernels`, `tests.engine`, ..., never a
    top-level `kernels` that would hide PyPI's (transformers imports that one)."""
    import importlib.util
    import sys

    here = __import__("pathlib").Path(__file__).resolve().parent
    assert (here / "__init__.py").exists()
    assert __name__ == "tests.test_package"
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if path.startswith(str(here)):
            assert name == "tests" or name.startswith("tests."), (name, path)
    spec = importlib.util.find_spec("kernels")
    if spec is not None:  # installed with transformers
        assert not str(spec.origin).startswith(str(here)), spec.origin

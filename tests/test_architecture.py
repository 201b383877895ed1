"""The package's shape, checked on the source: imports run one way through the layers (module
level and inside functions), no module cycles, and only the model families decide by
`model_type`. docs/architecture.md draws the same layers."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autoglm_jax"

# Bottom to top: a package may import only from lower layers (and from itself).
LAYERS = [
    ("config", "sharding", "kernels", "_version"),
    ("distributed", "processing"),
    ("nn",),
    ("families",),
    ("quant",),
    ("compress",),
    ("checkpoint",),
    ("engine",),
    ("serve", "training"),
    ("agent",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, at any depth (functions too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "autoglm_jax":  # `from autoglm_jax import x`: the package face
                out.append((node.lineno, "autoglm_jax"))
            else:  # module.name: a submodule, or an attribute (resolved by the callers)
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_violations(files: list[Path]) -> list[str]:
    bad = []
    for path in files:
        name = _module_name(path)
        if name == "autoglm_jax":
            continue  # the public face imports everything
        src = name.split(".")[1]
        for line, target in _imports(path):
            if target == "autoglm_jax":
                bad.append(
                    f"{path.relative_to(ROOT)}:{line}: imports the package face "
                    "`autoglm_jax` (import the module it needs)"
                )
                continue
            if not target.startswith("autoglm_jax."):
                continue
            dst = target.split(".")[1]
            if dst == src:
                continue
            if src not in RANK or dst not in RANK:
                bad.append(
                    f"{path.relative_to(ROOT)}:{line}: {src} -> {dst}: a package the "
                    "layer table does not list"
                )
            elif RANK[dst] >= RANK[src]:
                bad.append(
                    f"{path.relative_to(ROOT)}:{line}: {src} -> {dst} imports "
                    f"{'sideways' if RANK[dst] == RANK[src] else 'upward'}"
                )
    return bad


def module_cycles(files: list[Path]) -> list[list[str]]:
    """Cycles among the package's modules (Tarjan's strongly connected components)."""
    names = {_module_name(p): p for p in files}
    graph = {}
    for name, path in names.items():
        edges = set()
        for _, target in _imports(path):
            # `from autoglm_jax.x import y` may name a module x.y or an attribute of x
            while target and target not in names:
                target = target.rpartition(".")[0]
            if target and target != name and target != "autoglm_jax":
                edges.add(target)
        graph[name] = edges
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _mentions_model_type(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute) and node.attr == "model_type":
        return True
    if isinstance(node, ast.Name) and node.id == "model_type":
        return True
    if isinstance(node, ast.Call) and any(
        isinstance(a, ast.Constant) and a.value == "model_type" for a in node.args
    ):
        return True
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.slice, ast.Constant)
        and node.slice.value == "model_type"
    )


def _is_strings(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_is_strings(e) for e in node.elts)
    return False


def model_type_checks(path: Path) -> list[str]:
    """Comparisons of a model_type against string literals (==, !=, in, match cases)."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_mentions_model_type(s) for s in sides) and any(_is_strings(s) for s in sides):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        elif isinstance(node, ast.Match) and _mentions_model_type(node.subject):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return bad


# The axis legend of nn/layers.py and docs/architecture.md.
LEGEND = set("BTSDNKGHFVPMCROEQALXYIJxy")


def einsum_letters(path: Path) -> set[str]:
    """Letters of every einsum equation literal ("BTD,DNH->BTNH") in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"[A-Za-z]+(,[A-Za-z]+)*->[A-Za-z]*", node.value):
                out |= set(node.value) - set(",->")
    return out


def test_every_einsum_uses_the_legend():
    stray = {str(p.relative_to(ROOT)): sorted(einsum_letters(p) - LEGEND) for p in _sources()}
    assert {k: v for k, v in stray.items() if v} == {}


def test_imports_run_down_the_layers():
    assert layer_violations(_sources()) == []


def test_no_module_cycles():
    assert module_cycles(_sources()) == []


def test_only_the_families_decide_by_model_type():
    outside = [p for p in _sources() if "families" not in p.relative_to(PACKAGE).parts]
    outside += sorted((ROOT / "infer").rglob("*.py")) + sorted((ROOT / "train").rglob("*.py"))
    outside += sorted((ROOT / "benchmarks").rglob("*.py"))
    assert [bad for p in outside for bad in model_type_checks(p)] == []


@pytest.mark.parametrize(
    "source, layer_bad, type_bad",
    [
        ("from autoglm_jax.engine import Engine\n", 1, 0),  # nn -> engine: upward
        ("def f():\n    from autoglm_jax.serve import app\n", 1, 0),  # inside a function too
        ("import autoglm_jax as ag\n", 1, 0),  # the package face
        ("from autoglm_jax.config import ModelConfig\n", 0, 0),  # downward: fine
        ("def f(c):\n    return c.model_type in ('glm', 'glm4')\n", 0, 1),
        ("def f(d):\n    return d.get('model_type') == 'vit'\n", 0, 1),
        ("def f(c):\n    return c.model_type\n", 0, 0),
    ],
)
def test_the_checks_catch_what_they_should(tmp_path, monkeypatch, source, layer_bad, type_bad):
    fake_root = tmp_path
    module = fake_root / "autoglm_jax" / "nn" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", fake_root)
    assert len(layer_violations([module])) == layer_bad
    assert len(model_type_checks(module)) == type_bad


def test_a_cycle_is_found(tmp_path, monkeypatch):
    pkg = tmp_path / "autoglm_jax" / "training"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("def f():\n    from autoglm_jax.training.b import g\n")
    (pkg / "b.py").write_text("from autoglm_jax.training.a import f\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert module_cycles([pkg / "a.py", pkg / "b.py"]) == [
        ["autoglm_jax.training.a", "autoglm_jax.training.b"]
    ]

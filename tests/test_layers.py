"""The house is one-way: each layer imports only the layers below it, and no modules import each other in a circle.

Order, lowest first (docs/architecture.md, "Layers"): ``runtime`` (numpy + one backend; installs alone) <-
``calibration`` (clips
and ONNX -> ONNX; no torch) <- ``models`` (the PyTorch reference) <- ``export`` (the drivers). Every import counts,
including those inside functions and those under ``if TYPE_CHECKING:`` (an annotation is a dependency too: a cycle
through one is still a cycle). The one exception: the runtime may name an optional backend's types under
``TYPE_CHECKING`` at module level, since that import never runs.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("runtime", "calibration", "models", "export")
#: third-party packages the runtime may import inside functions (each is an optional backend or source)
RUNTIME_LAZY = {
    "onnxruntime",
    "tensorrt",
    "cuda",
    "openvino",
    "av",
    "PIL",
    "ray",
    "starlette",
    "fastapi",
    "cupy",
    "prometheus_client",
}  # the metrics extra: runtime/metrics.py, runtime/serving/metrics.py
#: never in the runtime, not even lazily: they are what the runtime exists to avoid
RUNTIME_FORBIDDEN = {"torch", "onnx", "onnxscript", "onnx_ir", "polygraphy", "transformers", "safetensors"}


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _is_module_level(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return False
    return True


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[tuple[str, int, bool, list[str]]]:
    """``(imported module, line, runs at import time, imported names)`` for every import in ``path``, relative ones
    resolved. An import inside a function or under ``if TYPE_CHECKING:`` does not run at import time."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        top = _is_module_level(node, parents) and not _in_type_checking(node, parents)
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, top, []) for a in node.names]
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        found.append((target, node.lineno, top, [a.name for a in node.names]))
    return found


def check_tree(root: Path, layers: tuple[str, ...] = LAYERS) -> list[str]:
    """Every violation of the layer order and every import cycle under ``root``, as readable lines."""
    modules = {
        module_name(p, root): p
        for layer in layers
        for p in sorted((root / layer).rglob("*.py"))
        if not {"build", "dist"} & set(p.relative_to(root).parts)
    }  # pip's build copies are not code
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        rank = layers.index(mod.split(".")[0])
        for target, line, top, names in imports_of(path, root):
            head = target.split(".")[0]
            where = f"{path.relative_to(root)}:{line}"
            if head in layers and layers.index(head) > rank:
                problems.append(f"{where}: {mod} (layer {layers[rank]}) imports {target} (layer {head}, above it)")
            if layers[rank] == "runtime" and head not in layers:
                if head in RUNTIME_FORBIDDEN:
                    problems.append(f"{where}: the runtime imports {target}, which it must never need")
                elif top and head in RUNTIME_LAZY:
                    problems.append(
                        f"{where}: the runtime imports the optional {target} at module level "
                        "(import it inside the function that needs it)"
                    )
                elif head not in RUNTIME_LAZY and head != "numpy" and head not in sys.stdlib_module_names:
                    problems.append(
                        f"{where}: the runtime imports {target}, not numpy, the standard library or a backend"
                    )
            for t in [target] + [f"{target}.{n}" for n in names]:  # ``from pkg import module`` imports pkg.module
                if t in modules and t != mod:
                    graph[mod].add(t)
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_project_imports_only_downwards_and_has_no_cycles() -> None:
    problems = check_tree(ROOT)
    assert not problems, "\n".join(problems)


def _write(root: Path, files: dict[str, str]) -> None:
    for layer in LAYERS:
        (root / layer).mkdir(parents=True, exist_ok=True)
        (root / layer / "__init__.py").write_text("")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.parametrize(
    "rel, text, needle",
    [
        ("runtime/bad.py", "def f():\n    from models import TimeSformer\n", "layer runtime) imports models"),
        ("calibration/bad.py", "from export.onnx.export import export_onnx\n", "layer calibration) imports export"),
        ("models/bad.py", "import export.demo\n", "layer models) imports export"),
        ("runtime/bad.py", "def f():\n    import torch\n", "never need"),
        ("runtime/bad.py", "import onnxruntime\n", "at module level"),
        ("runtime/bad.py", "import pandas\n", "not numpy"),
    ],
)
def test_an_upward_import_is_caught(tmp_path: Path, rel: str, text: str, needle: str) -> None:
    _write(
        tmp_path,
        {
            rel: text,
            "runtime/ok.py": "import numpy\nimport json\n",
            "export/ok.py": "from runtime.ok import numpy\nfrom models import x\n",
        },
    )
    problems = check_tree(tmp_path)
    assert len(problems) == 1 and needle in problems[0] and rel in problems[0], problems


_TC = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    "


def test_a_cycle_is_caught_even_through_type_checking_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "runtime/a.py": "from .b import B\n",
            "runtime/b.py": "def f():\n    from . import a\n",
            "runtime/c.py": "from .d import D\n",
            "runtime/d.py": _TC + "from .c import C\n",
            "runtime/e.py": "import typing\nif typing.TYPE_CHECKING:\n    from runtime.f import F\n",
            "runtime/f.py": "from runtime import e\n",
        },
    )
    assert check_tree(tmp_path) == [
        "import cycle: runtime.a -> runtime.b -> runtime.a",
        "import cycle: runtime.c -> runtime.d -> runtime.c",
        "import cycle: runtime.e -> runtime.f -> runtime.e",
    ]


@pytest.mark.parametrize(
    "rel, text, needle",
    [
        ("runtime/bad.py", _TC + "from models import TimeSformer\n", "layer runtime) imports models"),
        ("calibration/bad.py", _TC + "import export.demo\n", "layer calibration) imports export"),
        ("runtime/bad.py", _TC + "import torch\n", "never need"),
    ],
)
def test_a_type_checking_import_still_counts_for_layers(tmp_path: Path, rel: str, text: str, needle: str) -> None:
    _write(tmp_path, {rel: text})
    problems = check_tree(tmp_path)
    assert len(problems) == 1 and needle in problems[0] and rel in problems[0], problems


def test_the_runtime_may_name_a_backend_type_under_type_checking(tmp_path: Path) -> None:
    _write(tmp_path, {"runtime/x.py": _TC + "import onnxruntime\n    from openvino import Core\n"})
    assert check_tree(tmp_path) == []


def test_the_good_tree_is_clean(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "runtime/x.py": "import numpy as np\ndef f():\n    import onnxruntime\n",
            "calibration/y.py": "from runtime.x import np\n",
            "models/z.py": "from calibration import y\n",
            "export/w.py": "from models import z\nfrom .v import q\n",
            "export/v.py": "q = 1\n",
        },
    )
    assert check_tree(tmp_path) == []

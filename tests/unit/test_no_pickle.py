"""No pickle on the data path: models travel as ONNX, events as protobuf or JSON.

Unpickling runs code chosen by whoever wrote the bytes, so a model artifact or an
event that reached a service as a pickle would let its author run anything
there. This test reads every Python file of the services and libraries and fails
on any import of pickle, joblib, cloudpickle, dill, shelve or marshal, any
`*.load`/`loads` call through them, `pandas.read_pickle`, and
`numpy.load(..., allow_pickle=True)`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [ROOT / "services", ROOT / "libs"]
# Modules whose loading runs code from the bytes it reads.
UNSAFE_MODULES = frozenset({"pickle", "_pickle", "cPickle", "joblib", "cloudpickle", "dill"})
UNSAFE_MODULES |= {"shelve", "marshal"}
UNSAFE_CALLS = frozenset({"read_pickle"})


def python_files() -> Iterator[Path]:
    for folder in SCANNED:
        for path in sorted(folder.rglob("*.py")):
            if not {".venv", "__pycache__"} & set(path.parts):
                yield path


def findings(source: str, filename: str) -> list[str]:
    """Each unsafe import or call in `source`, as `file:line: what`."""
    found: list[str] = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNSAFE_MODULES:
                    report(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in UNSAFE_MODULES:
                report(node, f"from {node.module} import ...")
            for alias in node.names:
                if alias.name in UNSAFE_CALLS:
                    report(node, f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else None
            owner = function.value if isinstance(function, ast.Attribute) else None
            if (
                name in ("load", "loads")
                and isinstance(owner, ast.Name)
                and owner.id in UNSAFE_MODULES
            ):
                report(node, f"{owner.id}.{name}(...)")
            if name in UNSAFE_CALLS or (
                isinstance(function, ast.Name) and function.id in UNSAFE_CALLS
            ):
                report(node, "read_pickle(...)")
            for keyword in node.keywords:
                if (
                    keyword.arg == "allow_pickle"
                    and isinstance(keyword.value, ast.Constant)
                    and keyword.value.value is not False
                ):
                    report(node, "allow_pickle=True")
    return found


def test_no_service_or_library_loads_pickles() -> None:
    files = list(python_files())
    assert len(files) > 50, "the scan must see the services' and libraries' sources"
    problems = [
        problem
        for path in files
        for problem in findings(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert problems == [], "pickle-style loading on the data path:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("import pickle", "import pickle"),
        ("import joblib as jl", "import joblib"),
        ("from cloudpickle import loads", "from cloudpickle import ..."),
        ("import dill.settings", "import dill.settings"),
        ("pickle.loads(data)", "pickle.loads(...)"),
        ("joblib.load(path)", "joblib.load(...)"),
        ("frame = pandas.read_pickle(path)", "read_pickle(...)"),
        ("from pandas import read_pickle", "from pandas import read_pickle"),
        ("numpy.load(path, allow_pickle=True)", "allow_pickle=True"),
    ],
)
def test_the_scan_recognises_each_unsafe_form(source: str, what: str) -> None:
    assert [problem.split(": ", 1)[1] for problem in findings(source, "x.py")][:1] == [what]


def test_the_scan_leaves_safe_loading_alone() -> None:
    safe = "\n".join(
        [
            "import onnx, json, numpy",
            "model = onnx.load_model_from_string(data)",
            "event = json.loads(text)",
            "rows = numpy.load(path, allow_pickle=False)",
            "# a comment saying pickle.load is not used",
            "note = 'no pickle.loads here'",
        ]
    )
    assert findings(safe, "x.py") == []

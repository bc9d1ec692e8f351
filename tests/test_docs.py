"""docs/architecture*.md stays true: every file, module and qualified name it mentions exists in the tree."""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "segformer"
DOCS = sorted((ROOT / "docs").glob("architecture*.md"))
SPAN = re.compile(r"`([^`\n]+)`")
TOP = {p.stem for p in PACKAGE.iterdir() if (p.suffix == ".py" or p.is_dir()) and not p.name.startswith("__")}


def spans(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks are examples, not claims
    return SPAN.findall(text)


def defined_names(path: Path) -> set[str]:
    """Top-level and class-level names a module defines (functions, classes, assignments)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def check_path(span: str) -> str | None:
    """`dir/file.py`, `dir/`, or `file.py:name` (under src/segformer, else the repository root)."""
    path, _, name = span.partition(":")
    name = re.sub(r"\W.*", "", name)  # `loop.py:train()` -> train
    target = next((base / path for base in (PACKAGE, ROOT) if (base / path).exists()), None)
    if target is None:
        return f"{span}: no such file or folder"
    if name and name not in defined_names(target):
        return f"{span}: {path} defines no {name}"
    return None


def check_dotted(span: str) -> str | None:
    """`package.module.name` (relative to segformer) resolves by import and attribute lookup."""
    parts = span.removeprefix("segformer.").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("segformer." + ".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return f"{span}: {obj.__name__} has no {attr}"
            obj = getattr(obj, attr)
        return None
    return f"{span}: no module segformer.{parts[0]}"


def claims(path: Path) -> list[str]:
    out = []
    for span in spans(path):
        token = re.sub(r"\(.*\)$", "", span.strip())  # `train()` / `load(i)` -> the name
        if re.fullmatch(r"[\w/]+\.(py|md|toml)(:\w+)?", token) or (
            re.fullmatch(r"(\w+/)+", token) and token.split("/")[0] in TOP | {"docs", "tests", "benchmarks"}
        ):
            out.append(("path", token))
        elif re.fullmatch(r"(segformer\.)?[a-z_]\w*(\.\w+)+", token) and token.removeprefix("segformer.").split(".")[
            0
        ] in TOP | {"cli"}:
            out.append(("dotted", token))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_module_and_name_the_architecture_docs_mention_exists(doc):
    found = claims(doc)
    assert len(found) > 20, f"{doc.name}: expected many checkable claims, found {len(found)}"
    errors = [check_path(t) if kind == "path" else check_dotted(t) for kind, t in found]
    errors = [e for e in errors if e]
    assert not errors, f"{doc.name} is out of date:\n" + "\n".join(errors)


def test_the_checker_catches_a_stale_claim(tmp_path):
    assert check_path("inference/run.py:run") is None
    assert check_path("inference/run.py:no_such_function") is not None
    assert check_path("inference/nowhere.py") is not None
    assert check_dotted("inference.run.slide_windows") is None
    assert check_dotted("segformer.protocol.MODES") is None
    assert check_dotted("inference.nothing_here") is not None
    assert check_dotted("no_such_module.x") is not None

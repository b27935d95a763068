"""The layers, read from the import statements themselves (at the top of a module and inside functions):
the library never imports the stages or the flows; `wsss.cam` never imports `wsss.prompts` (the prompts
learn from teacher CAMs, so they sit above); the operations code (`wsss.ops`, `wsss.tracking`) imports no
ML package; a stage imports no other stage (only `stages.common`; `teacher` is the documented view of
`cams`); no import cycle runs through the library; and test modules share code through `tests/helpers/`,
never by importing each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"
ML = {"torch", "torchvision", "open_clip", "cv2", "pydensecrf", "sklearn", "timm", "matplotlib"}
ML_LIBRARY = ("wsss.cam", "wsss.clip", "wsss.masks", "wsss.metrics", "wsss.prompts", "wsss.seg", "wsss.toyclip")
VIEWS = {("stages.teacher", "stages.cams")}  # a stage that is another stage's code on other settings


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC if SRC in path.parents else REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def imported(path: Path) -> frozenset[str]:
    """Every module an import statement in `path` names (`from a import b` names `a` and `a.b`)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + [base] if base else parent)
            names |= {base, *(f"{base}.{a.name}" for a in node.names)}
    return frozenset(names)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


LIBRARY = modules(SRC / "wsss")


def test_the_library_never_imports_stages_or_flows():
    bad = {m: sorted(i for i in imported(p) if _within(i, ("stages", "flows"))) for m, p in LIBRARY.items()}
    assert not {m: v for m, v in bad.items() if v}


def test_cam_never_imports_prompts():
    cam = {m: p for m, p in LIBRARY.items() if _within(m, ("wsss.cam",))}
    bad = {m: sorted(i for i in imported(p) if _within(i, ("wsss.prompts",))) for m, p in cam.items()}
    assert cam and not {m: v for m, v in bad.items() if v}


def test_operations_code_imports_no_ml_package():
    ops = {m: p for m, p in LIBRARY.items() if _within(m, ("wsss.ops", "wsss.tracking"))}
    bad = {m: sorted(i for i in imported(p) if i.split(".")[0] in ML or _within(i, ML_LIBRARY)) for m, p in ops.items()}
    assert ops and not {m: v for m, v in bad.items() if v}
    code = (f"import sys\nimport {', '.join(ops)}\n"
            f"print(sorted(m for m in {sorted(ML)!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_a_stage_imports_no_other_stage():
    stages = modules(REPO / "stages")
    bad = {m: sorted(i for i in imported(p) if i in stages and i not in (m, "stages", "stages.common")
                     and (m, i) not in VIEWS) for m, p in stages.items()}
    assert not {m: v for m, v in bad.items() if v}


def test_test_modules_import_no_other_test_module():
    """What they share is in `tests/helpers/`."""
    bad = {p.name: sorted(i for i in imported(p) if i.split(".")[0].startswith("test_"))
           for p in sorted((REPO / "tests").glob("test_*.py"))}
    assert not {m: v for m, v in bad.items() if v}


def test_no_import_cycle_in_the_library():
    graph = {m: {i for i in imported(p) if i in LIBRARY and i != m} for m, p in LIBRARY.items()}
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (no recursion limit on a long import chain)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component))
    return found


def test_the_cycle_check_finds_a_cycle():
    cycles = [c for c in _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) if len(c) > 1]
    assert cycles == [["a", "b", "c"]]

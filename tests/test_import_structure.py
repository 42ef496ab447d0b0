"""The package's import structure: no import cycle between vit_patching modules, and the layering holds
(``vit_patching.patching`` never imports ``vit_patching.attribution``).

Every import of a vit_patching module counts, wherever it is written (module top, a function body, an
``if TYPE_CHECKING`` block): a function-local import that closes a cycle is still a cycle, only hidden until the
function runs.
"""
import ast
import subprocess
import sys
from pathlib import Path

import vit_patching

PACKAGE = Path(vit_patching.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: the vit_patching modules it imports}``; ``from pkg import name`` points at ``pkg.name`` when that
    is a module, else at ``pkg``."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    edges |= {sub} if sub in modules else ({target} if target in modules else set())
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the directed graph, or None (depth-first search, colouring)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_cycle_finder_finds_a_known_cycle_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_local_and_type_checking_imports():
    graph = import_graph()
    assert "vit_patching.model.timm_config" in graph["vit_patching.model.hooked_vit"]  # a top-level import
    assert "vit_patching.plotting.curves" in graph["vit_patching.circuits.evaluate"]  # inside CircuitEvaluation.plot
    assert len(graph) > 80


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_patching_never_imports_attribution():
    graph = import_graph()
    patching = [m for m in graph if m == "vit_patching.patching" or m.startswith("vit_patching.patching.")]
    upward = {m: sorted(e for e in graph[m] if e.startswith("vit_patching.attribution")) for m in patching}
    assert {m: e for m, e in upward.items() if e} == {}
    code = ("import sys, vit_patching.patching, vit_patching.patching.caap, vit_patching.patching.windows; "
            "print(sorted(m for m in sys.modules if m.startswith('vit_patching.attribution')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_attribution_maps_is_one_class_in_every_place():
    from vit_patching.attribution import AttributionMaps
    from vit_patching.attribution.base import AttributionMaps as from_base
    from vit_patching.maps import AttributionMaps as home
    from vit_patching.patching.caap_results import Attribution

    assert AttributionMaps is from_base is home and issubclass(Attribution, home)

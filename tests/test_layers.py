"""Imports only go down the layers (harness/README.md): api <- train <- measure <- run <-
report <- regression <- cli; plugins never import the CLI; no two modules import each other,
directly or round a longer circle. Read from the source with ``ast``, so an import inside a
function counts as much as one at the top."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: ground floor first; a module may import its own layer and the ones below
LAYERS = ["api", "train", "measure", "run", "report", "regression", "cli"]
#: the package itself is the plugins' facade (``from harness import hookimpl``) and arms the
#: worker lifetime on first import: outside the layers
TOP = {"harness.cli": "cli", "harness.testkit": "cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every ``harness``/``plugins`` module ``path`` imports, relative imports resolved."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from harness.run import results`` imports harness.run.results
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        out.update(n for n in names if n.split(".")[0] in ("harness", "plugins"))
    return out


def _known(modules: set[str], name: str) -> str | None:
    """The module (of ``modules``) an imported name refers to, or None (an attribute)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


MODULES = {module_name(p): p for d in ("harness", "plugins") for p in (ROOT / d).rglob("*.py")}
GRAPH = {m: {k for n in imports_of(p) if (k := _known(set(MODULES), n)) and k != m}
         for m, p in MODULES.items()}


def layer(mod: str) -> str | None:
    if mod in TOP:
        return TOP[mod]
    parts = mod.split(".")
    if parts[0] == "harness" and len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return None


def test_the_graph_is_read():
    assert "harness.run.runner" in GRAPH["harness.cli"]
    assert "harness.api.specs" in GRAPH["harness.run.config"] or GRAPH["harness.run.config"]


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if layer(m)))
def test_harness_imports_only_go_down(mod):
    mine = LAYERS.index(layer(mod))
    up = sorted(f"{t} ({layer(t)})" for t in GRAPH[mod]
                if t != "harness" and layer(t) and LAYERS.index(layer(t)) > mine)
    assert not up, (f"{mod} (layer {layer(mod)}) imports a layer above it: {', '.join(up)}; "
                    "move what it needs down, or let the layer above call it")
    assert not any(t.startswith("plugins") for t in GRAPH[mod]), (
        f"{mod} imports a plugin: the core names no plugin")


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if m.startswith("plugins")))
def test_plugins_never_import_the_cli(mod):
    assert "harness.cli" not in GRAPH[mod], (
        f"{mod} imports harness.cli: a plugin adds commands through register_commands "
        "(cli.matrix_options gives it bench run's matrix options)")


#: circles known and left for their owners, each with why; the test fails on any other one
#: and on one of these that is gone (so the list shrinks as they are broken)
KNOWN_CIRCLES: set = set()  # testkit <-> kitchecks broken by harness/kitparts.py


def test_no_import_circles():
    """Tarjan's strongly connected components of the module graph: each must be one module
    (a package's ``__init__`` re-exporting its modules is not a circle: edges into a package
    from its own modules are left out)."""
    def edges(m):
        return {t for t in GRAPH[m] if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}

    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges(v):
            if w not in index:
                strong(w)
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
                comps.append(sorted(comp))

    for m in sorted(MODULES):
        if m not in index:
            strong(m)
    found = {tuple(c) for c in comps}
    new = sorted(found - KNOWN_CIRCLES)
    assert not new, "import circles: " + "; ".join(" <-> ".join(c) for c in new)
    gone = sorted(KNOWN_CIRCLES - found)
    assert not gone, f"known circles now broken, take them off KNOWN_CIRCLES: {gone}"

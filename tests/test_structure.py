"""The layout rules of grit_jax/, checked on its source: imports flow one way (no cycle, counting imports
inside functions), the model and the command-line programs sit where they belong, files and functions
stay short, and the documents code comments cite are in the repository."""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "grit_jax")
COMMANDS = {
    "grit_jax.programs.grit_train",
    "grit_jax.programs.grit_convert",
    "grit_jax.programs.grit_aot",
    "grit_jax.programs.grit_data",
    "grit_jax.programs.grit_embed",
    "grit_jax.programs.grit_eval",
}


def _modules() -> dict[str, str]:
    """{dotted module name: path} of every grit_jax module (a package is its __init__)."""
    out = {}
    for directory, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(directory, file)
                name = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(name: str, path: str) -> set[str]:
    """grit_jax modules that `name` imports anywhere in its file (top level or inside functions)."""
    found = set()
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    # importing a module also runs its packages' __init__, which never import their submodules back here
    return {m for m in found if m in MODULES and m != name and not name.startswith(m + ".")}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle, as a path that returns to its start, or None."""
    state = dict.fromkeys(GRAPH, 0)  # 0 unseen, 1 on the current path, 2 done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state[nxt] == 1:
                return path[path.index(nxt) :] + [nxt]
            if state[nxt] == 0 and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(GRAPH):
        if state[start] == 0 and (found := visit(start)):
            return found
    return None


def test_the_checker_sees_imports_inside_functions_and_relative_ones():
    assert (
        "grit_jax.weights.loader" in GRAPH["grit_jax"]
    )  # `from grit_jax.weights.loader import ...` inside from_hf()
    assert "grit_jax.model.model_config" in GRAPH["grit_jax.model"]  # relative to the package
    assert "grit_jax.train.state" in GRAPH["grit_jax.train.step"]


def test_no_import_cycle():
    assert _cycle() is None, " -> ".join(_cycle())


def test_the_model_depends_only_on_what_is_below_it():
    allowed = {"grit_jax.choices", "grit_jax.errors", "grit_jax.sharding", "grit_jax.model.masks"}

    def in_model(name):
        return name == "grit_jax.model" or name.startswith("grit_jax.model.")

    for name, deps in GRAPH.items():
        if in_model(name):
            outside = {d for d in deps if not in_model(d)} - allowed
            assert not outside, f"{name} imports {sorted(outside)}"


def test_no_module_imports_a_command_line_program():
    for name, deps in GRAPH.items():
        assert not deps & COMMANDS, f"{name} imports {sorted(deps & COMMANDS)}: programs sit on top"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_and_functions_are_short(name):
    source = open(MODULES[name], encoding="utf-8").read()
    assert len(source.splitlines()) <= 400, f"{MODULES[name]}: over 400 lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{MODULES[name]}:{node.lineno} {node.name} has {length} lines (at most 60)"


def test_cited_documents_are_in_the_repository():
    for path in MODULES.values():
        text = open(path, encoding="utf-8").read()
        for cited in re.findall(r"\b[\w./-]*\b[A-Z][A-Z_]+\.md\b", text):
            assert any(
                os.path.exists(os.path.join(ROOT, d, os.path.basename(cited)))
                for d in ("", "docs", "benchmarks")
            ), f"{path} cites {cited}, which is not in the repository"
        assert "DESIGN decision" not in text, f"{path} cites a design document outside the repository"

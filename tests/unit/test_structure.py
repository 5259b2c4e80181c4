"""The layout rules of grit_jax/, checked on its source: folders are layers and imports flow one way
(no cycle, counting imports inside functions and relative ones), the model and the command-line programs
sit where they belong, no module name shadows a builtin or repeats another, files and functions stay
short, and the documents code comments cite are in the repository."""

import ast
import builtins
import os
import re

import pytest

from tests.grit_fixtures import ROOT

PACKAGE = os.path.join(ROOT, "grit_jax")


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


# Folders are layers, lowest first: a folder imports only the top-level modules (the leaves) and folders
# before it in this list. The package's own __init__ imports GritLM and from_hf lazily, for users.
LAYERS = ["model", "data", "weights", "inference", "retrieval", "train", "programs"]


def _folder(name: str) -> str | None:
    """The folder (layer) of a module, or None for a top-level module (a leaf)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and os.path.isdir(os.path.join(PACKAGE, parts[1])) else None


FOLDER_EDGES = {
    (_folder(a), _folder(b), a, b)
    for a, deps in GRAPH.items()
    if a != "grit_jax"
    for b in deps
    if _folder(a) != _folder(b)
}


def test_the_checker_sees_imports_inside_functions_and_relative_ones():
    assert "grit_jax.weights" in GRAPH["grit_jax"]  # inside from_hf()
    assert "grit_jax.model.model_config" in GRAPH["grit_jax.model"]  # relative to the package
    assert "grit_jax.train.state" in GRAPH["grit_jax.train.step"]


def test_every_folder_is_a_layer():
    folders = {_folder(name) for name in MODULES} - {None}
    assert folders == set(LAYERS), f"folders {sorted(folders)} vs layers {LAYERS}"


def test_no_import_cycle():
    assert _cycle() is None, " -> ".join(_cycle())


def test_folders_import_only_the_layers_below_them():
    for source, target, a, b in FOLDER_EDGES:
        if source is None:
            assert target is None, f"{a} (a top-level leaf) imports {b}, from the folder {target}/"
        elif target is not None:
            assert LAYERS.index(target) < LAYERS.index(source), (
                f"{a} imports {b}: {source}/ sits below {target}/"
            )


def test_no_two_folders_import_each_other():
    pairs = {(s, t) for s, t, _, _ in FOLDER_EDGES if s and t}
    assert not {p for p in pairs if p[::-1] in pairs}


def test_the_model_depends_only_on_the_leaves():
    for source, target, a, b in FOLDER_EDGES:
        if source == "model":
            assert target is None and b != "grit_jax.run_config", f"{a} imports {b}"


def test_inference_and_retrieval_never_import_training():
    for source, target, a, b in FOLDER_EDGES:
        assert not (source in ("inference", "retrieval") and target == "train"), f"{a} imports {b}"


def test_nothing_imports_a_program():
    for name, deps in GRAPH.items():
        programs = {d for d in deps if _folder(d) == "programs"}
        assert _folder(name) == "programs" or not programs, f"{name} imports {sorted(programs)}"
    for name in MODULES:
        if _folder(name) == "programs" and name != "grit_jax.programs":
            assert not any(name in deps for deps in GRAPH.values()), f"a module imports the program {name}"


def test_no_module_shadows_a_builtin_or_repeats_a_name():
    stems = [name.rpartition(".")[2] for name in MODULES if name != "grit_jax"]
    assert not set(stems) & set(dir(builtins)), sorted(set(stems) & set(dir(builtins)))
    assert len(stems) == len(set(stems)), sorted({s for s in stems if stems.count(s) > 1})


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


# Functions that may take more than four parameters positionally (issue 33). Everything else in grit_jax/
# takes the parameters after its fourth by keyword, so a call names what it passes.
POSITIONAL_ALLOWED = {
    # the reference gritlm.GritLM API: model code written for gritlm passes these in their order
    ("grit_jax/inference/gritlm.py", "__init__"),
    ("grit_jax/inference/gritlm.py", "from_pretrained"),
    ("grit_jax/inference/gritlm.py", "encode"),
    ("grit_jax/inference/gritlm.py", "generate"),
    # a shard_map body: shard_map passes its six sharded arrays positionally
    ("grit_jax/model/moe_dispatch.py", "local"),
}


def _positional_heavy() -> set[tuple[str, str, int]]:
    """(file, function, line) of every function in grit_jax/ with over four positional parameters."""
    found = set()
    for path in MODULES.values():
        rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args.posonlyargs + node.args.args
                if len([a for a in args if a.arg not in ("self", "cls")]) > 4:
                    found.add((rel, node.name, node.lineno))
    return found


def test_functions_take_the_parameters_after_the_fourth_by_keyword():
    found = _positional_heavy()
    extra = sorted(f"{p}:{line} {name}" for p, name, line in found if (p, name) not in POSITIONAL_ALLOWED)
    assert not extra, f"make the parameters after the fourth keyword-only (*,): {extra}"
    stale = POSITIONAL_ALLOWED - {(p, name) for p, name, _ in found}
    assert not stale, f"allowed but no longer positional-heavy, drop from POSITIONAL_ALLOWED: {sorted(stale)}"

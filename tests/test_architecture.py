"""The shape of the code: dependencies point one way, modules are what the README says, functions stay short."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT, python_env

LIBRARY = PROJECT / "effnet"
MAX_FUNCTION_LINES = 80


def project_imports(path: Path) -> set[str]:
    """The effnet modules a file imports anywhere in it (top level or inside functions), except for type hints only
    (``if TYPE_CHECKING:``: progress's ``Live`` names the loop's ``Run`` it reports on, never imports it)."""
    found = set()
    tree = ast.parse(path.read_text())
    hints = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
             for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("effnet")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("effnet"):
            # from effnet.base import files (a module) or from effnet import ScalingSpec (a name)
            folder = LIBRARY.joinpath(*node.module.split(".")[1:])
            modules = {f"{node.module}.{a.name}" for a in node.names
                       if (folder / f"{a.name}.py").exists() or (folder / a.name / "__init__.py").exists()}
            found |= modules or {node.module}
    return found


# The layers, bottom up: a subpackage may import its own layer's packages' modules only if listed, and any layer
# below. The top-level modules (the commands, housekeeping) stand above all of them.
LAYERS = {
    "base": set(),
    "arch": {"base"},
    "data": {"base"},
    "training": {"base", "arch", "data"},
    "analysis": {"base", "arch", "data", "training"},
    "compression": {"base", "arch", "data", "training"},
    "queue": {"base", "arch", "data", "training", "compression"},
    "experiments": {"base", "arch", "data", "training", "analysis", "compression", "queue"},
}


def layer(module: str) -> str:
    """effnet.queue.jobs -> queue; effnet.train (a command) or effnet (the root) -> top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "top"


def module_name(path: Path) -> str:
    """effnet/queue/jobs.py -> effnet.queue.jobs; effnet/__init__.py -> effnet; effnet/__main__.py -> effnet.__main__."""
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> list[str]:
    return sorted(module_name(p) for p in LIBRARY.rglob("*.py") if p.stem != "__main__")


def imported_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The top-level packages loaded by a fresh interpreter after running ``code``."""
    probe = code + "\nimport sys; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=PROJECT,
                         env=env or python_env())
    return set(out.stdout.split())


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in LIBRARY.rglob("*.py"):
        name = module_name(path)
        graph[name] = project_imports(path) - {name}
    return graph


def test_no_import_circle_inside_the_library():
    graph = import_graph()
    # effnet/__init__ re-exports; a module importing the package root is a module importing those.
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_dependencies_point_down_the_layers():
    upward = []
    for module, imports in import_graph().items():
        mine = layer(module)
        if mine == "top":
            continue
        for other in imports:
            theirs = layer(other) if other != "effnet" else "top"
            if theirs != mine and theirs not in LAYERS[mine]:
                upward.append(f"{module} ({mine}) imports {other} ({theirs})")
    assert not upward, upward


def test_every_layer_says_what_it_may_import():
    """The docstrings and LAYERS tell the same story: a package's "May import:" line names exactly its layers."""
    for name, allowed in LAYERS.items():
        doc = ast.get_docstring(ast.parse((LIBRARY / name / "__init__.py").read_text())) or ""
        line = next((x for x in doc.splitlines() if x.startswith("May import:")), None)
        assert line is not None, f"effnet/{name}/__init__.py does not say what it may import"
        said = set(re.findall(r"\b(" + "|".join(LAYERS) + r")\b", line))
        assert said == allowed, f"effnet/{name} says it may import {sorted(said)}, LAYERS says {sorted(allowed)}"


def test_the_bottom_of_the_house_imports_nothing_of_the_project():
    graph = import_graph()
    assert graph["effnet.arch.scaling"] == set()
    assert graph["effnet.arch.card"] == {"effnet.arch.scaling"}


def test_run_readers_do_not_import_the_queue():
    readers = [*(LIBRARY / "analysis").glob("*.py"), *(p for p in (PROJECT / "views").glob("*.py")
                                                      if p.stem not in ("train", "study", "compress"))]
    for path in readers:
        assert not any(layer(m) == "queue" for m in project_imports(path)), f"{path.name} imports the queue"


def test_no_library_function_is_over_80_lines():
    long = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long


def test_readme_module_table_names_every_library_module():
    readme = (PROJECT / "README.md").read_text()
    table = readme[readme.index("| module | concept |"):]
    table = table[: table.index("\n\n")]
    named = {m for line in table.splitlines()[2:] for m in re.findall(r"`([\w/]+)`", line.split("|")[1])}
    modules = {p.relative_to(LIBRARY).with_suffix("").as_posix() for p in LIBRARY.rglob("*.py")
               if not p.stem.startswith("_")}
    assert named == modules, f"README lists {sorted(named - modules)} that do not exist, misses {sorted(modules - named)}"


def test_no_library_module_names_streamlit():
    """The fast tier's check: no module of effnet/ imports streamlit itself (the next test also catches a package
    that would pull it in, at the cost of importing everything)."""
    named = [p.name for p in LIBRARY.rglob("*.py") if re.search(r"^\s*(import|from) streamlit", p.read_text(), re.M)]
    assert not named, named


@pytest.mark.slow
def test_the_library_never_imports_streamlit():
    """Every module of effnet/, found on disk (a list kept by hand missed six), imported in one interpreter."""
    loaded = imported_after("".join(f"import {m}\n" for m in library_modules()))
    assert "streamlit" not in loaded


def test_arithmetic_run_reading_and_the_queue_do_not_import_torch():
    """The explorer, the results page and the queue read specs and run folders without paying for torch."""
    code = ("import effnet.arch.scaling, effnet.arch.card, effnet.training.config, effnet.training.runs, "
            "effnet.queue.jobs, effnet.jobs, effnet.analysis.results, effnet.training.devices")
    assert "torch" not in imported_after(code)


def test_a_runner_start_and_jobs_list_find_the_devices_without_torch(tmp_path):
    """Counting GPUs with torch cost every runner start 6.3 s; nvidia-smi (or its absence) says it without."""
    env = {k: v for k, v in python_env().items() if k != "EFFNET_DEVICES"}  # let the queue look for GPUs itself
    code = (f"from effnet.queue import jobs; jobs.device_slots(); jobs.main(['list', '--root', {str(tmp_path)!r}]); "
            f"jobs.run_queue(__import__('pathlib').Path({str(tmp_path)!r}))")
    assert "torch" not in imported_after(code, env)

"""The package's shape: no import cycle (function-level imports included), every module imports
alone, and string choices of the config come from one place."""

import graphlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import ROOT, rlscale_imports

PACKAGE = ROOT / "rlscale"


def module_name(path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """module -> the rlscale modules it imports (a name imported from a package counts as its
    module when it is one, else as the package)."""
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for imported in rlscale_imports(path):
            while imported not in MODULES:
                imported = imported.rsplit(".", 1)[0]
            deps.add(imported)
        graph[name] = deps - {name}
    return graph


def test_no_import_cycle():
    graph = import_graph()
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
    assert set(order) == set(MODULES)
    # the boundaries the modules' docstrings promise
    assert "rlscale.analysis" not in graph["rlscale.report"]
    assert graph["rlscale.errors"] == set()
    for pure in ("rlscale.noise_scale", "rlscale.rollout", "rlscale.schedules"):
        assert not graph[pure] - {"rlscale.errors"}, pure


def test_ray_appears_in_few_modules():
    users = {name for name, path in MODULES.items() if "import ray" in path.read_text() or "from ray" in path.read_text()}
    assert users == {"rlscale.actors", "rlscale.cluster", "rlscale.sweep", "rlscale.submit"}


@pytest.mark.slow
def test_every_module_imports_alone():
    def alone(name):
        p = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=ROOT)
        return name, p.returncode, p.stderr[-500:]

    with ThreadPoolExecutor(2) as pool:
        failed = [r for r in pool.map(alone, set(MODULES) - {"rlscale.__main__"}) if r[1] != 0]  # __main__ runs the CLI
    assert not failed, failed

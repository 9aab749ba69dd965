"""Validating and expanding a sweep imports no heavy library: planning stays cheap on a login node.

Every shipped sweep file (``sweeps/``, ``sweeps/paper/``) is loaded and expanded in a fresh interpreter,
which then must not have imported torch, transformers, lm_eval, datasets or vllm (a cold
``import transformers`` alone takes seconds). One interpreter for all files, checked after each file, so
the first file that pulls a library in is the one named.
"""

from __future__ import annotations

import json
import subprocess
import sys

from harness.paths import repo_root

HEAVY = ("torch", "transformers", "lm_eval", "datasets", "vllm")
SWEEPS = repo_root() / "sweeps"

_SCRIPT = """
import json, sys
from harness.config import load_sweep_config, expand_sweep
heavy = {heavy!r}
for path in sys.argv[1:]:
    expand_sweep(load_sweep_config(path), path)
    print(json.dumps([path, sorted(m for m in heavy if m in sys.modules)]))
"""


def test_planning_the_shipped_sweeps_imports_no_heavy_library():
    files = sorted(SWEEPS.glob("*.yaml")) + sorted((SWEEPS / "paper").glob("*.yaml"))
    assert any(p.name == "demo.yaml" for p in files) and any(p.parent.name == "paper" for p in files)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(heavy=HEAVY), *map(str, files)],
        cwd=repo_root(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    checked = [json.loads(line) for line in out.stdout.splitlines()]
    assert [path for path, _ in checked] == [str(p) for p in files]
    imported = [(path, mods) for path, mods in checked if mods]
    assert not imported, f"planning imported a heavy library (first: {imported[0][0]}: {imported[0][1]})"

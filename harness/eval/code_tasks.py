"""The ``*_sandboxed`` code tasks (``evaluation/tasks/code/``), rendered for the installed lm-eval.

Their YAMLs ``include:`` lm-eval's own task YAMLs, which lie wherever this interpreter's lm-eval is
installed (the main venv and ``.venv-vllm`` each have their own). :func:`tasks_dir` renders the
templates — ``__LM_EVAL_TASKS__`` replaced by that directory, ``code_utils.py`` copied beside them —
into ``<cache>/code_tasks/<content hash>/`` once; a suite names it ``include_path: "@code"``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from harness.paths import cache_dir, evaluation_dir

PLACEHOLDER = "__LM_EVAL_TASKS__"
INCLUDE_PATH = "@code"  # a suite's include_path that means tasks_dir()


def template_dir() -> Path:
    """``evaluation/tasks/code/``: the task YAML templates and ``code_utils.py``."""
    return evaluation_dir() / "tasks" / "code"


def lm_eval_tasks_dir() -> Path:
    """The installed lm-eval's ``tasks/`` directory (found without importing lm-eval)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        raise RuntimeError("the code tasks need lm-eval: pip install lm-eval")
    return Path(spec.origin).parent / "tasks"


def rendered_files() -> dict[str, str]:
    """File name -> rendered text, for every YAML and Python file of :func:`template_dir`."""
    target = str(lm_eval_tasks_dir())
    return {
        src.name: src.read_text(encoding="utf-8").replace(PLACEHOLDER, target)
        for src in sorted(template_dir().iterdir())
        if src.is_file() and src.suffix in (".yaml", ".py")
    }


def tasks_dir() -> Path:
    """The rendered task directory (written once per content: templates and lm-eval location)."""
    files = rendered_files()
    digest = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:12]
    final = cache_dir() / "code_tasks" / digest
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{digest}.", suffix=".tmp"))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from others sharing the cache
        os.rename(tmp, final)  # atomic; fails if another process rendered it meanwhile: theirs is equal
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final

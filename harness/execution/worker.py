"""Run one stage of one run: ``python -m harness.execution.worker {train,eval} RUN_DIR [--backend hf|vllm]``.

The sweep executes every stage through this entry point, each in a fresh process, so a crash, a leak or
a hung library in one stage cannot take the sweep (or the next stage) down with it. The worker marks the
stage done only after all of its outputs were written; on any exception it records the traceback in
``status/<stage>.failed`` and exits 1.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from harness.runs.layout import RunDir


def run_stage(stage: str, run_dir: str | Path, backend: str | None = None) -> None:
    """Run ``stage`` of the run in ``run_dir``. ``backend``: the evaluation backend the launcher resolved
    (``harness.execution.launch.eval_command``); None resolves ``eval.backend`` here."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    if stage == "train":
        from harness.training.recipe import train

        summary = train(cfg, run)
        if summary is not None:  # None on the non-main processes of a multi-process run
            run.mark_done("train", summary)
    elif stage == "eval":
        from harness.eval.runner import evaluate_suites, load_suite
        from harness.toy import resolve

        model = str(run.final_model) if cfg.is_training else resolve(cfg.model, cfg.toy)
        # Results go to eval/<suite name> (a suite may be given as a file path). Suites finished in an
        # earlier attempt are kept; the rest share one model load.
        suites = [load_suite(n) for n in cfg.eval.suites]
        pending = [s for s in suites if not (run.eval_dir(s.name) / "results.json").exists()]
        if pending:
            out_dirs = [run.eval_dir(s.name) for s in pending]
            evaluate_suites(model, pending, out_dirs, cfg.eval, cfg.toy, backend)
        run.mark_done("eval")
    else:
        raise ValueError(f"unknown stage '{stage}' (valid: train, eval)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    backend = None
    if len(argv) == 4 and argv[2] == "--backend":
        backend, argv = argv[3], argv[:2]
    if len(argv) != 2:
        print("usage: python -m harness.execution.worker {train,eval} RUN_DIR [--backend hf|vllm]", file=sys.stderr)
        return 2
    stage, run_dir = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_stage(stage, run_dir, backend)
    except BaseException:
        RunDir(run_dir).mark_failed(stage, traceback.format_exc())
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    sys.exit(main())

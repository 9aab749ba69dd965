"""The one subprocess entry point of the harness.

    python -m harness.execution.worker {train,eval} RUN_DIR [--backend hf|vllm]   one stage of one run
    python -m harness.execution.worker request REQUEST.json                       an `otr-harness eval`

The sweep executes every stage through this entry point, each in a fresh process, so a crash, a leak or
a hung library in one stage cannot take the sweep (or the next stage) down with it. A stage is marked done
only after all of its outputs were written; on any exception the worker records the traceback in the
run's failure marker and exits 1. A request (:class:`~harness.eval.request.EvalRequest`, written by
``harness.execution.launch.run_eval_request``) prints one line per evaluated entry and exits 0, or 2 with
the message of a configuration error. ``harness.execution.launch`` builds these command lines.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from harness.config import ConfigError
from harness.config.suites import load_suite
from harness.eval.request import EvalRequest, run_request
from harness.eval.results import result_lines
from harness.eval.runner import evaluate_suites
from harness.runs.layout import EVAL, STAGES, TRAIN, RunDir
from harness.toy import resolve

USAGE = (
    "usage: python -m harness.execution.worker {train,eval} RUN_DIR [--backend hf|vllm]\n"
    "       python -m harness.execution.worker request REQUEST.json"
)


def run_stage(stage: str, run_dir: str | Path, backend: str | None = None) -> None:
    """Run ``stage`` of the run in ``run_dir``. ``backend``: the evaluation backend the launcher resolved
    (``harness.execution.launch.eval_command``); None resolves ``eval.backend`` here."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    if stage == TRAIN:
        # Imported for this stage only: evaluation processes (the vLLM venv pins an older transformers)
        # must not load the Trainer. The direction execution -> training is the allowed one.
        from harness.training.recipe import train

        summary = train(cfg, run)
        if summary is not None:  # None on the non-main processes of a multi-process run
            run.mark_done(TRAIN, summary)
    elif stage == EVAL:
        model = str(run.final_model) if cfg.is_training else resolve(cfg.model, cfg.toy)
        # Results go to eval/<suite name> (a suite may be given as a file path). Suites finished in an
        # earlier attempt are kept; the rest share one model load.
        suites = [load_suite(n) for n in cfg.eval.suites]
        pending = [s for s in suites if not run.results_file(s.name).exists()]
        if pending:
            out_dirs = [run.eval_dir(s.name) for s in pending]
            evaluate_suites(model, pending, out_dirs, cfg.eval, cfg.toy, backend)
        run.mark_done(EVAL)
    else:
        raise ValueError(f"unknown stage '{stage}' (valid: {', '.join(STAGES)})")


def run_request_file(request_file: str | Path) -> int:
    """Evaluate the saved request and print each entry's result; 2 (with the message) on a ConfigError."""
    try:
        request = EvalRequest.load(request_file)
        for results in run_request(request):
            for line in result_lines(results):
                print(line, flush=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) == 2 and argv[0] == "request":
        return run_request_file(argv[1])
    backend = None
    if len(argv) == 4 and argv[2] == "--backend":
        backend, argv = argv[3], argv[:2]
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    stage, run_dir = argv
    try:
        run_stage(stage, run_dir, backend)
    except BaseException:
        RunDir(run_dir).mark_failed(stage, traceback.format_exc())
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    sys.exit(main())

"""Run one stage of one run: ``python -m harness.worker {train,eval} RUN_DIR``.

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

from harness.rundir import RunDir


def run_stage(stage: str, run_dir: str | Path) -> None:
    run = RunDir(run_dir)
    cfg = run.read_config()
    if stage == "train":
        from harness.train import train

        summary = train(cfg, run)
        run.mark_done("train", summary)
    elif stage == "eval":
        from harness.evaluate import evaluate, load_suite
        from harness.toy import resolve

        model = str(run.final_model) if cfg.is_training else resolve(cfg.model, cfg.toy)
        for name in cfg.eval.suites:
            if (run.eval_dir(name) / "results.json").exists():
                continue  # this suite finished in an earlier attempt
            evaluate(model, load_suite(name), run.eval_dir(name), cfg.eval, cfg.toy)
        run.mark_done("eval")
    else:
        raise ValueError(f"unknown stage '{stage}' (valid: train, eval)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m harness.worker {train,eval} RUN_DIR", file=sys.stderr)
        return 2
    stage, run_dir = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_stage(stage, run_dir)
    except BaseException:
        RunDir(run_dir).mark_failed(stage, traceback.format_exc())
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    sys.exit(main())

"""The ``otr-harness`` command. Thin: parses arguments and calls the modules that do the work."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from harness.config import ConfigError

EPILOG = """examples:
  otr-harness sweep plan sweeps/demo.yaml      # what would run, and what is already done
  otr-harness sweep run sweeps/demo.yaml       # train + evaluate every pending run, then report
  otr-harness sweep run FILE --max-parallel 4  # 4 runs at once (one per GPU when there are GPUs)
  otr-harness sweep run FILE --executor slurm  # one SLURM array task per run (resources: slurm: block)
  otr-harness sweep status runs/demo           # done / pending / failed per run
  otr-harness report runs/demo                 # results.csv, report.md, report.html
  otr-harness report runs/a --compare runs/b   # ... with sweep b's numbers beside a's
  otr-harness train run.yaml --out runs/one    # one training run on its own
  otr-harness eval runs/demo/<run> --suite toy # evaluate a checkpoint or run directory
"""


def _cmd_sweep_plan(args: argparse.Namespace) -> int:
    from harness.execution import sweep

    pl = sweep.plan(args.file, args.out, args.set)
    print(f"sweep '{pl.sweep.name}' -> {pl.out_dir}")
    print(sweep.format_table(sweep.status_rows(pl)))
    print(", ".join(f"{n} {s}" for s, n in sorted(pl.counts().items())))
    return 0


def _cmd_sweep_run(args: argparse.Namespace) -> int:
    from harness.execution import sweep

    code = sweep.run(
        args.file,
        args.out,
        executor=args.executor,
        max_parallel=args.max_parallel,
        wait_for_jobs=args.wait,
        overrides=args.set,
    )
    if args.report and args.wait:
        pl = sweep.plan(args.file, args.out, args.set)
        report_dir = Path(args.report_dir) if args.report_dir else None
        code_r = _report(pl.out_dir, report_dir, allow_partial=args.allow_partial)
        code = code or code_r
    return code


def _cmd_sweep_status(args: argparse.Namespace) -> int:
    from harness.execution import sweep

    pl = sweep.load_plan_from_dir(args.dir)
    problems: list[str] = []
    rows = sweep.status_rows(pl, problems)
    from harness.execution import slurm

    queued = slurm.queue_states(pl)  # runs whose SLURM task is still queued or running
    for row in rows:
        if row["status"] != "done" and row["run"] in queued:
            row["status"] = queued[row["run"]]
    print(sweep.format_table(rows))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for line in problems:  # a done marker whose files do not read back: `sweep run` redoes the stage
        print(f"corrupt: {line}")
    return 0


def _report(
    sweep_dir: Path, out: Path | None, compare: Path | None = None, *, allow_partial: bool = False
) -> int:
    """Render the report; name every unreadable run file on stderr; 1 when there is one (unless
    ``allow_partial``): a report with a hole in it must not pass for a whole one."""
    from harness import report

    out = out or Path("reports") / sweep_dir.name
    paths = report.render(sweep_dir, out, compare=compare)
    print(f"report: {paths['md']}")
    print(f"report: {paths['html'].resolve()}")
    if not paths.unreadable:
        return 0
    for line in paths.unreadable:
        print(f"unreadable: {line}", file=sys.stderr)
    if allow_partial:
        print(
            f"report: {len(paths.unreadable)} unreadable file(s) left out (--allow-partial)", file=sys.stderr
        )
        return 0
    print(
        f"error: the report leaves out {len(paths.unreadable)} unreadable file(s) (named above and at the top of "
        "the report); run 'otr-harness sweep run' to redo their stages, or pass --allow-partial",
        file=sys.stderr,
    )
    return 1


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.runs.layout import is_sweep_dir

    for d in [args.dir] + ([args.compare] if args.compare else []):
        if not is_sweep_dir(Path(d)):
            raise ConfigError(
                f"{d}: not a sweep directory (no runs found); pass the directory 'sweep run' wrote"
            )
    compare = Path(args.compare) if args.compare else None
    return _report(
        Path(args.dir), Path(args.out) if args.out else None, compare, allow_partial=args.allow_partial
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from harness.execution.stages import train_standalone

    return train_standalone(args.config, args.out, args.set)


def _cmd_eval(args: argparse.Namespace) -> int:
    from harness.eval.request import build_request
    from harness.execution.launch import run_eval_request

    request = build_request(
        args.model,
        suites=args.suite,
        tasks=args.tasks,
        include_path=args.include_path,
        metric=args.metric,
        backend=args.backend,
        allow_unsafe_code=args.allow_unsafe_code,
        limit=args.limit,
        batch_size=args.batch_size,
        no_cache=args.no_cache,
        toy_preset=args.toy_preset,
        out=args.out,
    )
    # Its own process (vLLM holds its memory until exit; the vllm backend needs its own venv), which
    # prints each entry's result; its output is also appended to the request's log file.
    return run_eval_request(request)


def _cmd_toy_build(args: argparse.Namespace) -> int:
    from harness import toy

    world = toy.build(toy.ToyConfig.preset(args.preset))
    print(world.root)
    return 0


ALLOW_PARTIAL_HELP = (
    "exit 0 even when some run files do not read back (they are named at the top of the report and on "
    "stderr either way; without this flag the command exits 1)"
)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``error: <what>; see '<prog> --help'``), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``--limit 0`` would evaluate nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_set(p: argparse.ArgumentParser, example: str = "base.training.max_steps=2") -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a value of the file by its dotted key, e.g. --set {example} (repeatable; VALUE is "
        "YAML: 2, 5.0e-5, true, [0, 1], {name: sft}); an unknown key or wrong type stops with exit code 2",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="otr-harness",
        description="Fine-tune causal LMs with SFT, One-Token Rollout (OTR) and other token-level objectives; "
        "sweep, evaluate with lm-eval, and report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    sw = sub.add_parser("sweep", help="plan, run and inspect sweeps").add_subparsers(
        dest="action", required=True
    )
    p = sw.add_parser("plan", help="validate a sweep file and list its runs (no side effects)")
    p.add_argument("file", help="sweep YAML, e.g. sweeps/demo.yaml")
    _add_set(p)
    p.add_argument("--out", help="sweep directory (default: output_dir of the file, or runs/<name>)")
    p.set_defaults(func=_cmd_sweep_plan)
    p = sw.add_parser("run", help="run every pending stage of a sweep; skip what is done")
    p.add_argument("file", help="sweep YAML, e.g. sweeps/demo.yaml")
    _add_set(p)
    p.add_argument("--out", help="sweep directory (default: output_dir of the file, or runs/<name>)")
    p.add_argument(
        "--executor",
        choices=["local", "slurm"],
        default="local",
        help="local: this machine (default); slurm: one SLURM array task per run via submitit, resources "
        "from the file's slurm: block",
    )
    p.add_argument(
        "--max-parallel",
        type=_positive_int,
        metavar="N",
        help="runs at once (local: default 1, with GPUs one per GPU via CUDA_VISIBLE_DEVICES; slurm: caps "
        "the array's running tasks)",
    )
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="slurm: return once the array is submitted (no report); `sweep status DIR` follows it",
    )
    p.add_argument(
        "--no-report", dest="report", action="store_false", help="do not write the report afterwards"
    )
    p.add_argument("--report-dir", help="where the report goes (default: reports/<sweep dir name>)")
    p.add_argument("--allow-partial", action="store_true", help=ALLOW_PARTIAL_HELP)
    p.set_defaults(func=_cmd_sweep_run)
    p = sw.add_parser("status", help="done / pending / failed per run of a sweep directory")
    p.add_argument("dir", help="sweep directory, e.g. runs/demo")
    p.set_defaults(func=_cmd_sweep_status)

    p = sub.add_parser("report", help="aggregate a sweep directory into results.csv, report.md, report.html")
    p.add_argument("dir", help="sweep directory, e.g. runs/demo")
    p.add_argument("--out", help="output directory (default: reports/<sweep dir name>)")
    p.add_argument("--compare", metavar="DIR2", help="a second sweep directory to show beside the first")
    p.add_argument("--allow-partial", action="store_true", help=ALLOW_PARTIAL_HELP)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "train",
        help="run one training from a run config YAML (under `accelerate launch` if it has a launcher: block)",
    )
    p.add_argument("config", help="run config YAML (model, dataset, objective, training, ...)")
    _add_set(p, "model=/path/to/model")
    p.add_argument("--out", required=True, help="run directory to write")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a model, checkpoint or run directory on suites")
    p.add_argument("model", help="run directory, HF model directory, Hub name, or toy:base")
    p.add_argument(
        "--suite",
        action="append",
        default=None,
        help="suite name under evaluation/suites or a suite file (repeatable; default: the run's "
        "eval.suites, else toy)",
    )
    p.add_argument(
        "--tasks",
        help="comma-separated lm-eval task or group names to evaluate as suite 'tasks' (any lm-eval task; "
        "with --include-path, your own task YAMLs)",
    )
    p.add_argument("--include-path", help="directory of extra lm-eval task YAMLs for --tasks")
    p.add_argument("--metric", help="primary metric of the --tasks (default: the first lm-eval reports)")
    p.add_argument(
        "--backend",
        choices=["auto", "hf", "vllm"],
        help="auto: vllm on a GPU with a vLLM venv, else hf; vllm needs `make vllm` (default: the run's "
        "eval.backend, else auto)",
    )
    p.add_argument(
        "--allow-unsafe-code",
        action="store_true",
        help="allow tasks that execute model-generated code (lm-eval's confirm_run_unsafe_code)",
    )
    p.add_argument("--limit", type=_positive_int, help="documents per task (default: all)")
    p.add_argument("--batch-size", type=_positive_int, help="batch size (default: the run's, else 32)")
    p.add_argument("--no-cache", action="store_true", help="re-evaluate even if the result is cached")
    p.add_argument(
        "--toy-preset", default="demo", help="toy world of the @toy suites when MODEL is not a run directory"
    )
    p.add_argument(
        "--out",
        help="output root, one directory per suite (default: RUN/eval for a run directory, else eval_results)",
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("toy", help="the toy world").add_subparsers(dest="action", required=True)
    b = p.add_parser("build", help="build (or reuse) the toy world: data, tokenizer, pre-trained base model")
    b.add_argument("--preset", default="demo", help="demo (default) or tiny")
    b.set_defaults(func=_cmd_toy_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, its one line already on stderr)
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

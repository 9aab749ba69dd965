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
  otr-harness sweep status runs/demo           # done / pending / failed per run
  otr-harness report runs/demo                 # results.csv, report.md, report.html
  otr-harness report runs/a --compare runs/b   # ... with sweep b's numbers beside a's
  otr-harness train run.yaml --out runs/one    # one training run on its own
  otr-harness eval runs/demo/<run> --suite toy # evaluate a checkpoint or run directory
"""


def _cmd_sweep_plan(args: argparse.Namespace) -> int:
    from harness import sweep

    pl = sweep.plan(args.file, args.out)
    print(f"sweep '{pl.sweep.name}' -> {pl.out_dir}")
    print(sweep.format_table(sweep.status_rows(pl)))
    print(", ".join(f"{n} {s}" for s, n in sorted(pl.counts().items())))
    return 0


def _cmd_sweep_run(args: argparse.Namespace) -> int:
    from harness import sweep

    code = sweep.run(args.file, args.out)
    if args.report:
        pl = sweep.plan(args.file, args.out)
        code_r = _report(pl.out_dir, Path(args.report_dir) if args.report_dir else None)
        code = code or code_r
    return code


def _cmd_sweep_status(args: argparse.Namespace) -> int:
    from harness import sweep

    pl = sweep.load_plan_from_dir(args.dir)
    print(sweep.format_table(sweep.status_rows(pl)))
    print(", ".join(f"{n} {s}" for s, n in sorted(pl.counts().items())))
    return 0


def _report(sweep_dir: Path, out: Path | None, compare: Path | None = None) -> int:
    from harness import report

    out = out or Path("reports") / sweep_dir.name
    paths = report.render(sweep_dir, out, compare=compare)
    print(f"report: {paths['md']}")
    print(f"report: {paths['html'].resolve()}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    for d in [args.dir] + ([args.compare] if args.compare else []):
        if not (Path(d) / "plan.json").exists() and not list(Path(d).glob("*/config.yaml")):
            raise ConfigError(
                f"{d}: not a sweep directory (no runs found); pass the directory 'sweep run' wrote"
            )
    compare = Path(args.compare) if args.compare else None
    return _report(Path(args.dir), Path(args.out) if args.out else None, compare)


def _cmd_train(args: argparse.Namespace) -> int:
    from harness.config import load_run_config
    from harness.rundir import RunDir
    from harness.worker import run_stage

    cfg = load_run_config(args.config)
    if not cfg.is_training:
        raise ConfigError(
            f"{args.config}: field 'objective': required to train (e.g. objective: {{name: sft}})"
        )
    run = RunDir(args.out)
    run.write_config(cfg)
    run_stage("train", run.path)
    print(f"model: {run.final_model}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from harness.config import EvalConfig
    from harness.evaluate import evaluate, load_suite
    from harness.rundir import RunDir
    from harness.toy import ToyConfig, resolve

    target = Path(args.model)
    toy = ToyConfig()
    if (target / "config.yaml").exists():  # a run directory: its final model, its toy world
        run = RunDir(target)
        cfg = run.read_config()
        toy = cfg.toy or toy
        model = str(run.final_model) if cfg.is_training else resolve(cfg.model, toy)
        out_root = run.path / "eval"
    else:
        model = resolve(args.model, toy)
        out_root = Path(args.out or "eval_results")
    cfg_eval = EvalConfig(limit=args.limit, batch_size=args.batch_size)
    for suite_name in args.suite:
        res = evaluate(model, load_suite(suite_name), out_root / suite_name, cfg_eval, toy)
        for task, r in res["tasks"].items():
            err = f" ± {r['stderr']:.4f}" if r["stderr"] is not None else ""
            print(f"{suite_name}/{task}: {r['metric']} = {r['value']:.4f}{err} (n={r['n']})")
    return 0


def _cmd_toy_build(args: argparse.Namespace) -> int:
    from harness import toy

    world = toy.build(toy.ToyConfig.preset(args.preset))
    print(world.root)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p.add_argument("--out", help="sweep directory (default: output_dir of the file, or runs/<name>)")
    p.set_defaults(func=_cmd_sweep_plan)
    p = sw.add_parser("run", help="run every pending stage of a sweep; skip what is done")
    p.add_argument("file", help="sweep YAML, e.g. sweeps/demo.yaml")
    p.add_argument("--out", help="sweep directory (default: output_dir of the file, or runs/<name>)")
    p.add_argument(
        "--no-report", dest="report", action="store_false", help="do not write the report afterwards"
    )
    p.add_argument("--report-dir", help="where the report goes (default: reports/<sweep dir name>)")
    p.set_defaults(func=_cmd_sweep_run)
    p = sw.add_parser("status", help="done / pending / failed per run of a sweep directory")
    p.add_argument("dir", help="sweep directory, e.g. runs/demo")
    p.set_defaults(func=_cmd_sweep_status)

    p = sub.add_parser("report", help="aggregate a sweep directory into results.csv, report.md, report.html")
    p.add_argument("dir", help="sweep directory, e.g. runs/demo")
    p.add_argument("--out", help="output directory (default: reports/<sweep dir name>)")
    p.add_argument("--compare", metavar="DIR2", help="a second sweep directory to show beside the first")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("train", help="run one training from a run config YAML")
    p.add_argument("config", help="run config YAML (model, dataset, objective, training, ...)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a model, checkpoint or run directory on suites")
    p.add_argument("model", help="run directory, HF model directory, Hub name, or toy:base")
    p.add_argument(
        "--suite",
        action="append",
        default=None,
        help="suite name under evaluation/suites (repeatable; default: toy)",
    )
    p.add_argument("--limit", type=int, help="documents per task (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", help="output directory when MODEL is not a run directory (default: eval_results)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("toy", help="the toy world").add_subparsers(dest="action", required=True)
    b = p.add_parser("build", help="build (or reuse) the toy world: data, tokenizer, pre-trained base model")
    b.add_argument("--preset", default="demo", help="demo (default) or tiny")
    b.set_defaults(func=_cmd_toy_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "suite", "unset") is None:
        args.suite = ["toy"]
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

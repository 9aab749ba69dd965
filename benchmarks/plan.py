"""Time planning a large sweep: ``sweep plan`` on a 10,000-run grid (load, validate, expand, run ids).

    python benchmarks/plan.py              # 10,000 runs, 5 repetitions, prints each and the median
    python benchmarks/plan.py --runs 1000  # any size of the form  k-values x tau-values x lrs x seeds
    python benchmarks/plan.py --profile    # also print the top of a cProfile of one repetition

Target: median < 2 s for 10,000 runs. Planning has no side effects (no run directory is read or written
beyond a stat per status lookup, which this benchmark does not do), so this is pure config work: YAML,
pydantic validation of every resolved RunConfig, and a content hash per run.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

_T0 = time.perf_counter()  # imports are not planning: timed apart, printed by main()

from harness import toy  # noqa: E402
from harness.execution.plan import plan  # noqa: E402

_IMPORT_S = time.perf_counter() - _T0


def sweep_dict(runs: int, shape: str) -> dict:
    """A toy-world sweep of ``runs`` runs: 1 variant x k x tau x lr x (seeds | beta), each axis runs**(1/4) long.

    ``shape='seeds'``: the 4th axis is the seed (configs differing only in the seed are validated once);
    ``shape='grid'``: the 4th axis is objective.beta and there is one seed (every run validated: worst case).
    """
    side = round(runs ** (1 / 4))
    if side**4 != runs:
        raise SystemExit(f"--runs must be a 4th power (e.g. 256, 1296, 10000), got {runs}")
    fourth = list(range(side))
    betas = [round(-0.01 * i, 2) for i in range(side)]
    return {
        "name": "plan-bench",
        "toy": {},
        "base": {
            "model": "toy:base",
            "dataset": toy.dataset_config(),
            "training": {"learning_rate": 1e-3, "per_device_train_batch_size": 32, "max_steps": 150},
            "eval": {"suites": ["toy"]},
        },
        "variants": {"otr": {"objective": {"name": "otr", "k": 16, "tau": 1.2, "beta": -0.1}}},
        "grid": {
            "objective.k": [2**i for i in range(side)],
            "objective.tau": [round(0.5 + 0.1 * i, 2) for i in range(side)],
            "training.learning_rate": [float(f"{1e-4 * (i + 1):.1e}") for i in range(side)],
            **({"objective.beta": betas} if shape == "grid" else {}),
        },
        "seeds": fourth if shape == "seeds" else [0],
        "evaluate_base": False,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shape", choices=["seeds", "grid", "both"], default="both")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)

    # Planning imports no transformers (harness/config/training_args.py holds its field table).
    print(f"imports (harness, pydantic models): {_IMPORT_S:.2f} s, not counted below")
    ok = True
    for shape in ["seeds", "grid"] if args.shape == "both" else [args.shape]:
        ok &= _bench(args, shape)
    return 0 if ok else 1


def _bench(args: argparse.Namespace, shape: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(sweep_dict(args.runs, shape)))
        out = Path(tmp) / "runs"
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            pl = plan(path, out)
            ids = [p.spec.run_id for p in pl.runs]
            times.append(time.perf_counter() - t0)
            assert len(ids) == len(set(ids)) == args.runs, (len(ids), len(set(ids)))
        med = statistics.median(times)
        target = 2 * args.runs / 1e4
        print(
            f"[{shape}] plan {args.runs} runs: median {med:.3f} s over {args.reps} reps "
            f"(min {min(times):.3f}, max {max(times):.3f}; {1e6 * med / args.runs:.0f} us/run); "
            f"target < {target:g} s: {'met' if med < target else 'MISSED'}"
        )
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            plan(path, out)
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    return math.isfinite(med) and med < target


if __name__ == "__main__":
    sys.exit(main())

"""Statistics of the report, each a small pure function of the tidy table or the per-question scores.

Seeds
    ``main_table``: per method × task the mean over seeds, the sample standard deviation (ddof = 1; NaN with
    one seed) and n = the number of seeds (runs) that have a result. It is ``seed_means`` (the aggregation)
    then ``order_table`` (rows in report order), so a caller that needs the methods present before it can
    choose the row order (the reference methods first) aggregates once.

Reference methods and forgetting
    ``pick_reference``: the method the deltas refer to (SFT, the base model). ``forgetting``: per method
    and OOD task, the change of the mean vs the base model.

Paired bootstrap (``paired_bootstrap``, ``significance``)
    For a method M and the reference R (SFT) on one task:

    1. per question q, the score of each run on q (the primary metric of that document, e.g. exact match
       0/1) is averaged over the seeds of M, and separately over the seeds of R: m_q and r_q;
    2. only questions that both M and R answered are kept (the same questions: a paired design), n of them;
    3. the point estimate is  d = mean_q(m_q) - mean_q(r_q);
    4. B resamples (default 2000): a numpy ``Generator`` seeded with ``seed`` (default 0) draws
       ``idx = rng.integers(0, n, size=(B, n))`` (question indices with replacement, all at once), and
       resample b gives  d_b = mean(m[idx[b]]) - mean(r[idx[b]]);
    5. the 95 % CI is the 2.5 % and 97.5 % percentiles of d_b (``numpy.quantile``, linear interpolation);
       the difference is marked significant when the CI excludes 0.

    Averaging over seeds first treats the seeds as repeated measurements of the same question; the CI
    therefore reflects question sampling (which benchmark items were drawn), not seed-to-seed variance, which
    the main table reports separately as the std over seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DOMAIN_ORDER = ["math", "code", "reasoning"]
SPLIT_ORDER = ["id", "ood"]
N_BOOT = 2000


def task_order(results: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(domain, split, task) in report order: math, code, reasoning, then others; in-domain before OOD."""
    seen = list(dict.fromkeys(zip(results["domain"], results["split"], results["task"], strict=True)))

    def key(item):
        d, s, _ = item
        return (
            DOMAIN_ORDER.index(d) if d in DOMAIN_ORDER else len(DOMAIN_ORDER),
            d,
            SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER),
        )

    return sorted(seen, key=key)


def seed_means(results: pd.DataFrame) -> pd.DataFrame:
    """Method × task: mean, std (ddof=1; NaN for one seed) and n seeds of the primary metric, unordered.

    The one aggregation of the main table; ``order_table`` puts its rows in report order.
    """
    col = "method" if "method" in results else "variant"
    grouped = results.groupby([col, "domain", "split", "task"], sort=False)["value"]
    table = grouped.agg(mean="mean", std="std", n="count").reset_index().rename(columns={col: "method"})
    table["variant"] = table["method"]
    return table


def order_table(means: pd.DataFrame, results: pd.DataFrame, variant_order: list[str]) -> pd.DataFrame:
    """``seed_means`` rows by method (``variant_order`` first, then the others as they come) and, within a
    method, by ``task_order``; ``method`` becomes an ordered categorical with that order."""
    order = [v for v in variant_order if v in set(means["method"])]
    order += [v for v in dict.fromkeys(means["method"]) if v not in order]
    rank = {t: i for i, t in enumerate(task_order(results))}
    table = means.copy()
    table["_m"] = table["method"].map({m: i for i, m in enumerate(order)})
    table["_t"] = [rank[(d, s, t)] for d, s, t in zip(table.domain, table.split, table.task, strict=True)]
    table = table.sort_values(["_m", "_t"], kind="stable").drop(columns=["_m", "_t"]).reset_index(drop=True)
    table["method"] = pd.Categorical(table["method"], categories=order, ordered=True)
    table["variant"] = table["method"]
    return table


def main_table(results: pd.DataFrame, variant_order: list[str]) -> pd.DataFrame:
    """Method × task: mean, std (ddof=1; NaN for one seed) and n seeds of the primary metric, in order."""
    return order_table(seed_means(results), results, variant_order)


def pick_reference(runs: pd.DataFrame, table: pd.DataFrame, name: str) -> str | None:
    """The method the deltas refer to: a variant called ``name``, else the first one with that objective.

    ``table`` is ``seed_means`` or ``main_table`` (only its set of methods counts).
    """
    if table.empty or runs.empty:
        return None
    have = set(table["method"].astype(str))
    if name in have:
        return name
    for m, obj in zip(runs["method"], runs["objective"], strict=True):
        if obj == name and m in have:
            return m
    return None


def deltas(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per method × task: mean(method) - mean(reference), difference of the seed means (NaN where missing)."""
    ref = table[table["method"] == reference].set_index("task")["mean"]
    out = table[["method", "task", "mean"]].copy()
    out["delta"] = out["mean"] - out["task"].map(ref.to_dict()).astype(float)
    return out.drop(columns="mean")


def per_question(samples: pd.DataFrame, method: str, task: str) -> pd.Series:
    """Scores of ``method`` on ``task`` per question (doc_id), averaged over its seeds (runs)."""
    sub = samples[(samples["method"] == method) & (samples["task"] == task)]
    return sub.groupby("doc_id", sort=True)["score"].mean()


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """CI of mean(a) - mean(b) over paired questions (a[i], b[i]): see the module docstring, steps 3-5."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-d arrays of one length, got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        return {"delta": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return {"delta": float(a.mean() - b.mean()), "lo": float(lo), "hi": float(hi), "n": n}


def significance(
    samples: pd.DataFrame, reference: str, methods: list[str], n_boot: int = N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """Paired bootstrap of (method - reference) per task, from per-question scores pooled over seeds.

    One row per (method, task) where both have sample logs: delta, lo, hi (95 % CI), n questions, the
    number of seeds pooled on each side, and ``significant`` (the CI excludes 0).
    """
    cols = ["method", "task", "delta", "lo", "hi", "n", "seeds", "ref_seeds", "significant"]
    if samples.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    tasks = list(dict.fromkeys(samples["task"]))
    seeds = samples.groupby(["method", "task"])["run_id"].nunique()
    for m in methods:
        if m == reference:
            continue
        for t in tasks:
            qa, qb = per_question(samples, m, t), per_question(samples, reference, t)
            common = qa.index.intersection(qb.index)
            if len(common) == 0:
                continue
            r = paired_bootstrap(qa[common].to_numpy(), qb[common].to_numpy(), n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "method": m,
                    "task": t,
                    **r,
                    "seeds": int(seeds.get((m, t), 0)),
                    "ref_seeds": int(seeds.get((reference, t), 0)),
                    "significant": bool(r["lo"] > 0 or r["hi"] < 0),
                }
            )
    return pd.DataFrame(rows, columns=cols)


def seed_stats(values: pd.Series) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1 or NaN, n) of one quantity over seeds, ignoring missing values."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    return (
        float(v.mean()) if len(v) else float("nan"),
        float(v.std()) if len(v) > 1 else float("nan"),
        len(v),
    )


def forgetting(table: pd.DataFrame, base: str | None) -> pd.DataFrame:
    """Per method × non-target (OOD) task: mean − base mean, the method's std over seeds, n."""
    cols = ["method", "task", "delta", "std", "n"]
    if base is None or table.empty:
        return pd.DataFrame(columns=cols)
    ood = table[table["split"] == "ood"]
    base_mean = ood[ood["method"] == base].set_index("task")["mean"]
    out = ood[(ood["method"] != base) & ood["task"].isin(base_mean.index)].copy()
    out["delta"] = out["mean"] - out["task"].map(base_mean.to_dict()).astype(float)
    out["method"] = out["method"].astype(str)
    return out[cols].reset_index(drop=True)

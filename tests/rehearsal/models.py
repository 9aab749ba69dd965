"""Stand-in models: each paper architecture at tiny size, built here from its config, with a byte-level
BPE tokenizer trained here that carries the real family's special tokens, chat template, pad / eos /
bos and tokenizer class (so transformers reloads it as it reloads the real one).

Families (what the real checkpoints' config.json / tokenizer_config.json / generation_config.json say):
- ``qwen2.5-math`` / ``qwen2.5`` (Qwen2ForCausalLM): ``Qwen2Tokenizer``, no BOS, eos = pad =
  ``<|endoftext|>``, ChatML (``<|im_start|>`` / ``<|im_end|>``) with a default system message; tied
  embeddings for the 1.5B, untied for the 7B;
- ``qwen3`` (Qwen3ForCausalLM): ``Qwen2Tokenizer`` with ``<think>`` tokens, eos = pad = ``<|endoftext|>``;
- ``llama3.2`` (LlamaForCausalLM, llama3 rope scaling): ``PreTrainedTokenizerFast`` that prepends
  ``<|begin_of_text|>``, eos ``<|end_of_text|>``, NO pad token, the header chat format
  (``<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>``), and a generation_config that samples
  (temperature 0.6, top_p 0.9) as the real base model's does.

With ``model_type: qwen2`` / ``qwen3`` transformers 5 reloads the tokenizer as ``Qwen2Tokenizer`` and
rebuilds its normalizer and pre-tokenizer (NFC, Qwen's split regex, byte level): the stand-in is trained
with exactly that pipeline, so its ids survive the reload (``check_roundtrip``).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\n" + "{system}" + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

FAMILIES = {
    "qwen2.5-math": {
        "model_type": "qwen2",
        "tie": True,
        "max_pos": 4096,
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "template": QWEN_TEMPLATE.replace(
            "{system}", "Please reason step by step, and put your final answer within \\\\boxed{}."
        ),
    },
    "qwen2.5": {
        "model_type": "qwen2",
        "tie": False,
        "max_pos": 32768,
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "template": QWEN_TEMPLATE.replace(
            "{system}", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        ),
    },
    "qwen3": {
        "model_type": "qwen3",
        "tie": True,
        "max_pos": 32768,
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        "template": QWEN3_TEMPLATE,
    },
    "llama3.2": {
        "model_type": "llama",
        "tie": True,
        "max_pos": 131072,
        "specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        "template": LLAMA3_TEMPLATE,
    },
}
SIZE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
}  # fmt: skip  (head size 32: vLLM's CPU kernels' minimum)


def _train_bpe(family: str, corpus: list[str], vocab_size: int) -> Tokenizer:
    qwen = family != "llama3.2"
    tok = Tokenizer(
        models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    if qwen:
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        tok.normalizer = normalizers.NFC()
        regex = PRETOKENIZE_REGEX
    else:
        regex = LLAMA3_REGEX
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(FAMILIES[family]["specials"])  # after the vocabulary, as in the real ones
    if not qwen:  # Llama 3 prepends <|begin_of_text|> to every encoding
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", bos)],
        )
    return tok


def build(family: str, out: Path, corpus: list[str], vocab_size: int = 4096) -> Path:
    """Build the stand-in of ``family`` into ``out`` (model, tokenizer, generation config); returns ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    spec = FAMILIES[family]
    llama = family == "llama3.2"
    raw = _train_bpe(family, corpus, vocab_size)
    eos = "<|end_of_text|>" if llama else "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|begin_of_text|>" if llama else None,
        eos_token=eos,
        pad_token=None if llama else eos,
        clean_up_tokenization_spaces=False,
        model_max_length=spec["max_pos"],
    )
    tokenizer.chat_template = spec["template"]
    tokenizer.save_pretrained(out)
    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast" if llama else "Qwen2Tokenizer"
    cfg_file.write_text(json.dumps(cfg, indent=2))

    ids = {t: raw.token_to_id(t) for t in spec["specials"]}
    vocab = -(-raw.get_vocab_size() // 64) * 64  # padded to a multiple of 64, as the real embeddings are
    kwargs = dict(SIZE, vocab_size=vocab, max_position_embeddings=spec["max_pos"],
                  tie_word_embeddings=spec["tie"], eos_token_id=ids[eos])  # fmt: skip
    if llama:
        kwargs.update(
            bos_token_id=ids["<|begin_of_text|>"],
            rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        )  # fmt: skip
        gen = GenerationConfig(bos_token_id=kwargs["bos_token_id"], eos_token_id=ids[eos], do_sample=True,
                               temperature=0.6, top_p=0.9)  # fmt: skip
    else:
        kwargs.update(bos_token_id=ids["<|endoftext|>"], rope_theta=1000000.0, use_sliding_window=False)
        gen = GenerationConfig(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids[eos], max_new_tokens=2048)
    config = AutoConfig.for_model(spec["model_type"], **kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    gen.save_pretrained(out)
    check_roundtrip(out, tokenizer)
    return out


def check_roundtrip(path: Path, built) -> None:
    """The saved tokenizer, reloaded as transformers reloads it, gives the same ids and chat rendering."""
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(path)
    probe = "Problem: Compute $3 + 4$.\n  Solution: 3 + 4 = \\boxed{7}  ünïcödé <|im_end|> 12345"
    messages = [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}]
    for a, b in [
        (built(probe)["input_ids"], again(probe)["input_ids"]),
        (
            built.apply_chat_template(messages, tokenize=False),
            again.apply_chat_template(messages, tokenize=False),
        ),
        (
            (built.eos_token, built.pad_token, built.bos_token),
            (again.eos_token, again.pad_token, again.bos_token),
        ),
    ]:
        if a != b:
            raise AssertionError(
                f"{path}: the tokenizer does not survive save/reload ({type(again).__name__}): {a} != {b}"
            )

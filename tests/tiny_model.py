"""A tiny random Llama and tokenizer built in code: no download, loads in well under a second.

``make_tiny_model_dir(path)`` writes a transformers model directory, which
adaptkit then loads through its ordinary local-directory route.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
# ChatML, as SmolLM2-Instruct uses.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "How long does it take me to get to the library? By bicycle it takes about 12 minutes.",
    "What should I cook for dinner tonight? A vegetarian lentil curry with rice.",
    "Driving from Quincy takes about 15 minutes. Grill a steak with potatoes.",
    "What is the capital of France? Paris. The ocean is vast and blue.",
    "user assistant system Lexington Concord museum station airport office weather",
    "0 1 2 3 4 5 6 7 8 9 km miles minutes hours bike car train taxi walk",
]


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(vocab_size: int, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        # Large enough init that logits through the (frozen, tied) embeddings can get sharp:
        # with the default 0.02 a LoRA cannot move the loss at all.
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def make_tiny_model_dir(path: Path, seed: int = 0, layers: int = 2) -> Path:
    """Write a tiny random Llama + tokenizer into ``path`` (a local base-model directory)."""
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer), seed, layers)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

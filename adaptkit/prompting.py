"""Turn conversations into token ids, the same way for training and for answering."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaptkit.interactions import Message

# Used only when a tokenizer ships no chat template (e.g. a base, non-instruct model).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def as_messages(prompt: str | Sequence[Message] | Sequence[dict]) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in prompt]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict]) -> list[int]:
    """Token ids of the conversation followed by the assistant's turn header."""
    template = tokenizer.chat_template or FALLBACK_TEMPLATE
    encoded = tokenizer.apply_chat_template(
        list(messages), chat_template=template, add_generation_prompt=True, tokenize=True
    )
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that closes an assistant turn (``<|im_end|>`` for ChatML models)."""
    token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
        return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an eos token")
    return int(tokenizer.eos_token_id)


def encode_example(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], target: str, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with the loss on the assistant's tokens only (prompt = -100)."""
    prompt_ids = encode_prompt(tokenizer, messages)
    answer_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [
        end_of_turn_id(tokenizer)
    ]
    input_ids = (prompt_ids + answer_ids)[-max_length:]
    labels = ([-100] * len(prompt_ids) + answer_ids)[-max_length:]
    return input_ids, labels


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens that end an answer: the end of the assistant's turn, and eos if different."""
    stops = [end_of_turn_id(tokenizer)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(int(tokenizer.eos_token_id))
    return stops


def left_pad(prompts: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for a batch, padded on the left so answers line up."""
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return input_ids, attention_mask


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[dict]],
    *,
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy answers for a batch of conversations (left-padded, one forward per step)."""
    prompts = [encode_prompt(tokenizer, conversation) for conversation in conversations]
    pad_id = pad_token_id(tokenizer)
    input_ids, attention_mask = left_pad(prompts, pad_id)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=pad_id,
    )
    width = input_ids.shape[1]
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output]

"""The conditions an arena run compares, and the prompt each one shows the model.

Same base model, same tasks; a condition only changes what goes into the prompt
(the request, the oracle's stated preference, retrieved history) and whether the
user's adapter is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adaptkit.arena.episodes import HistoryRecord, Task
from adaptkit.errors import InputError
from adaptkit.retrieval import Retriever


@dataclass(frozen=True)
class Condition:
    name: str
    uses_adapter: bool
    uses_memory: bool
    uses_oracle: bool = False


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("base", uses_adapter=False, uses_memory=False),
        Condition("oracle", uses_adapter=False, uses_memory=False, uses_oracle=True),
        Condition("memory", uses_adapter=False, uses_memory=True),
        Condition("adapter", uses_adapter=True, uses_memory=False),
        Condition("adapter+memory", uses_adapter=True, uses_memory=True),
    )
}
Messages = list[dict[str, str]]

# The memory prompt: retrieved past exchanges as context, then the request. Kept in
# the system turn so the request itself reads exactly as in the other conditions.
MEMORY_HEADER = (
    "You are a helpful assistant. Earlier conversations with this user, "
    "which show their habits and preferences:"
)


def parse_conditions(text: str) -> list[Condition]:
    """``"base,adapter"`` -> conditions, validated, in the canonical order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown or not names:
        raise InputError(
            f"--conditions {text!r}: unknown {', '.join(unknown) or '(empty)'}; "
            f"choose from {', '.join(CONDITIONS)}"
        )
    return [c for name, c in CONDITIONS.items() if name in names]


def memory_messages(request: str, memories: Sequence[HistoryRecord]) -> Messages:
    lines = [MEMORY_HEADER]
    for record in memories:
        asked = record.interaction.messages[-1].content
        answered = record.interaction.sft_target or record.interaction.response or ""
        lines.append(f"- User: {asked}\n  Assistant: {answered}")
    return [{"role": "system", "content": "\n".join(lines)}, {"role": "user", "content": request}]


def build_prompt(
    condition: Condition,
    task: Task,
    history: Sequence[HistoryRecord],
    retriever: Retriever,
    memory_k: int,
) -> Messages:
    """The conversation the model answers for ``task`` under ``condition``."""
    if condition.uses_oracle:
        return [{"role": "user", "content": task.oracle_intent or task.intent}]
    if condition.uses_memory and history:
        picked = retriever.top_k(task.intent, [r.text for r in history], memory_k)
        return memory_messages(task.intent, [history[i] for i in picked])
    return [{"role": "user", "content": task.intent}]

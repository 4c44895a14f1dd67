"""PEFT-U (Clarke et al., 2024): annotators' own labels for the same kind of texts.

Reads PEFT-U's per-user file as its repository writes it for each dataset
(``user_data_leaked.json`` / ``user_data_no_leak.json``): an object from user id to
``{"train": {...}, "val": {...}, "test": {...}}``, each split an object from sample
id to ``{"text": str, "label": [str, ...]}`` (other sample fields are ignored). A
user's ``train`` samples are their history (the label they gave is the accepted
answer), their ``test`` samples the deployment requests; ``val`` is not used.

The request is PEFT-U's own template: ``"{instruction} Text: {text} Label:"``.
PEFT-U's instructions live in its config per dataset; pass one with
``--instruction``, else the request names the labels the file uses. Several labels
(multi-label datasets) are answered joined by ", ". Checks: ``label_eval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptkit.arena.importers.common import (
    ImportFormatError,
    ImportOptions,
    Record,
    deployment,
    history,
    keep,
    label_eval,
    read_json,
    text_field,
)
from adaptkit.user_ids import USER_ID_PATTERN

HISTORY_SPLIT, DEPLOYMENT_SPLIT = "train", "test"


def _labels(sample: dict[str, Any], path: Path, where: str) -> list[str]:
    raw = sample.get("label")
    values = raw if isinstance(raw, list) else [raw]
    labels = [str(v).strip() for v in values if isinstance(v, (str, int)) and str(v).strip()]
    if not labels or len(labels) != len(values) or any(isinstance(v, bool) for v in values):
        raise ImportFormatError(
            path, where, "label", f"expected a list of non-empty strings, got {raw!r}"
        )
    return labels


def _split(user_data: Any, split: str, path: Path, where: str) -> list[tuple[str, list[str]]]:
    """(text, labels) of one user's split, in file order."""
    if not isinstance(user_data, dict):
        raise ImportFormatError(path, where, None, "expected an object of splits (train, test)")
    samples = user_data.get(split)
    if not isinstance(samples, dict):
        raise ImportFormatError(
            path, where, split, f"expected an object of samples, got {type(samples).__name__}"
        )
    out = []
    for sample_id, sample in samples.items():
        spot = f"{where}.{split}[{sample_id!r}]"
        out.append((text_field(sample, "text", path, spot), _labels(sample, path, spot)))
    return out


def import_peft_u(path: Path, options: ImportOptions) -> list[Record]:
    options.refuse("peft-u", "golds", "mcq", "per_user")
    raw = read_json(path, "PATH")
    if not isinstance(raw, dict) or not raw:
        raise ImportFormatError(path, "", None, "expected an object from user id to splits")
    users = []
    for user_id, user_data in list(raw.items())[: options.max_users or None]:
        where = f"[{user_id!r}]"
        user = f"peftu-{user_id}"
        if not USER_ID_PATTERN.fullmatch(user):
            raise ImportFormatError(path, where, None, f"user id {user_id!r} cannot name a user")
        past = keep(_split(user_data, HISTORY_SPLIT, path, where), options.max_history)
        asked = keep(_split(user_data, DEPLOYMENT_SPLIT, path, where), options.max_tasks)
        if past and asked:  # PEFT-U has users with an empty split; nothing to test there
            users.append((user, past, asked))
    if not users:
        raise ImportFormatError(path, "", None, "no user has both train and test samples")

    label_set = sorted(
        {label for _, past, asked in users for _, labels in [*past, *asked] for label in labels}
    )
    instruction = options.instruction or (
        f"Label the following text. Answer with one of: {', '.join(label_set)}."
    )
    records: list[Record] = []
    for user, past, asked in users:
        for order, (text, labels) in enumerate(past):
            request = f"{instruction} Text: {text} Label:"
            records.append(history(f"{user}-h{order}", user, order, request, ", ".join(labels)))
        for number, (text, labels) in enumerate(asked):
            request = f"{instruction} Text: {text} Label:"
            check = label_eval(labels, label_set)
            records.append(
                deployment(f"{user}-t{number}", user, len(past) + number, request, check)
            )
    return records

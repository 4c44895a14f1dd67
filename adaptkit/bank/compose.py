"""Offline composition: TIES / DARE / SVD merges of several LoRAs into one new adapter.

Run-time composition (a linear sum of deltas, one set per row) needs nothing
built ahead: the engine concatenates the adapters along the rank. TIES and DARE
are not linear in the deltas (they trim, elect signs, drop at random), so they
are built once, offline, through PEFT's ``add_weighted_adapter``, and saved as an
ordinary PEFT adapter, e.g. into the shared library ``adapters/shared/NAME/``,
where the engine serves it like any other.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel

from adaptkit.bank.lora_linear import MultiLoraLinear
from adaptkit.base_model import BaseModel
from adaptkit.errors import InputError
from adaptkit.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS

EQUAL_RANK = ("ties", "dare_ties", "dare_linear")  # PEFT refuses mixed ranks for these
COMBINATIONS = ("ties", "dare_ties", "dare_linear", "ties_svd", "dare_ties_svd", "svd", "cat")


def _rank(path: Path) -> int:
    return int(json.loads((path / ADAPTER_CONFIG).read_text()).get("r", 8))


def build_weighted_adapter(
    base: BaseModel,
    sources: Sequence[tuple[str | Path, float]],
    output_dir: str | Path,
    *,
    combination_type: str = "ties",
    density: float = 0.5,
    seed: int = 0,
) -> Path:
    """Combine PEFT adapters ``(path, weight)`` into one PEFT adapter saved in ``output_dir``.

    ``base.model`` must be a plain model (not held by an open Engine); it is left
    exactly as it was. DARE's random drop is seeded with ``seed``.
    """
    if combination_type not in COMBINATIONS:
        raise InputError(
            f"combination_type {combination_type!r}: choose one of {', '.join(COMBINATIONS)}"
        )
    if not 0.0 < density <= 1.0:
        raise InputError(f"density must be in (0, 1], got {density}")
    if len(sources) < 1:
        raise InputError("build_weighted_adapter needs at least one (adapter, weight)")
    for path, weight in sources:
        if not (Path(path) / ADAPTER_WEIGHTS).is_file():
            raise InputError(f"adapter {str(path)!r} is not a PEFT adapter directory")
        if not math.isfinite(weight):
            raise InputError(f"weight of adapter {str(path)!r} is {weight}; use a finite number")
    if combination_type in EQUAL_RANK:
        ranks = {str(path): _rank(Path(path)) for path, _ in sources}
        if len(set(ranks.values())) > 1:
            listed = ", ".join(f"{path} (r={rank})" for path, rank in ranks.items())
            raise InputError(
                f"combination_type {combination_type!r} needs adapters of the same rank; got "
                f"{listed}. Use a *_svd variant or 'cat' for mixed ranks"
            )
    if any(isinstance(m, MultiLoraLinear) for m in base.model.modules()):
        raise InputError("close the Engine that holds this base model before building offline")
    output = Path(output_dir)
    if output.exists() and any(output.iterdir()):
        raise InputError(f"{output} exists and is not empty; choose a new adapter directory")

    names = [f"source{i}" for i in range(len(sources))]
    model = PeftModel.from_pretrained(base.model, str(sources[0][0]), adapter_name=names[0])
    try:
        for name, (path, _) in zip(names[1:], sources[1:], strict=True):
            model.load_adapter(str(path), adapter_name=name)
        torch.manual_seed(seed)
        model.add_weighted_adapter(
            names,
            [float(w) for _, w in sources],
            adapter_name="combined",
            combination_type=combination_type,
            density=density,
        )
        with tempfile.TemporaryDirectory() as scratch:
            model.save_pretrained(scratch, selected_adapters=["combined"])
            saved = Path(scratch) / "combined"  # PEFT nests non-default adapters
            output.mkdir(parents=True, exist_ok=True)
            for file in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                shutil.move(str(saved / file), output / file)
    finally:
        model.unload()
    return output

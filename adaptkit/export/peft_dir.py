"""Export a stored adapter version as a PEFT directory that serving engines load as is.

vLLM, LoRAX and SGLang read a narrow part of ``adapter_config.json``: ``r``,
``lora_alpha``, ``target_modules`` and ``bias: "none"``. Older vLLM releases drop
``layers_to_transform``, ``rank_pattern`` and ``alpha_pattern`` without a word, and
any of them serves the plain base when no tensor name matches a module. So the
export writes an adapter that needs nothing else:

- one rank ``r`` for every module: smaller ranks are padded with zero rows of A and
  zero columns of B (the padded delta is the same function of the input);
- one scale ``lora_alpha / r``: each module's own scale (``rank_pattern``,
  ``alpha_pattern``, ``use_rslora``) is folded into its B (B is copied untouched
  when the two scales are equal, which is the common case);
- no ``layers_to_transform``: an adapter on the top layers simply has no tensors for
  the other layers, which engines (and PEFT, whose missing B starts at zero) treat as
  a zero delta there;
- every tensor name checked against the base's modules and shapes, and the blob
  (weights and config) checked against its digests, before anything is written.

What the subset cannot express (DoRA, biases, ``modules_to_save``...) is refused with
the reason; ``read_adapter`` already refuses it for serving, so a stored version
never has it unless the registry was written by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from adaptkit.bank import PEFT_PREFIX, LoraWeights, ModuleShape, read_adapter
from adaptkit.errors import InputError
from adaptkit.export.names import versioned_name
from adaptkit.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Registry, VersionInfo

PROVENANCE = "adaptkit-export.json"


class ExportError(InputError):
    """A version cannot be exported as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ExportedAdapter:
    """What an export wrote (also saved beside the adapter as ``adaptkit-export.json``)."""

    path: Path
    name: str  # the immutable engine-side name, "alice@v7"
    user_id: str
    number: int
    served_base: str  # adapter_config.json's base_model_name_or_path
    rank: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    modules: int  # modules with weights
    source_sha256: str  # the registry blob it was made from
    changes: tuple[str, ...]  # how the stored adapter was rewritten to fit the subset


def export_version(
    registry: Registry,
    version: VersionInfo,
    out: Path,
    *,
    served_base: str,
    shapes: Mapping[str, ModuleShape],
) -> ExportedAdapter:
    """Write ``version`` as a PEFT directory at ``out`` (created atomically).

    ``served_base`` is the name the engine serves the base under (vLLM's ``--model``):
    vLLM's resolvers compare it with ``base_model_name_or_path``. ``shapes`` are the
    base's adaptable modules (``adaptkit.bank.adaptable_shapes``). An ``out`` that
    already holds this very export is returned as it is; any other existing ``out``
    is refused.
    """
    label = f"user {version.user_id!r} v{version.number}"
    existing = _existing_export(out, version)
    if existing is not None:
        return existing
    if out.exists():
        raise ExportError(
            f"--to {out} already exists and is not the export of {label}; "
            "choose a new directory or remove it"
        )
    registry.fetch(version)  # from the shared object store, when there is one
    weights = read_adapter(
        version.blob_path,
        label=label,
        shapes=shapes,
        base_aliases=frozenset({version.base_model}),
        expected_sha256=version.blob_sha256,
        expected_config_sha256=version.config_sha256,
    )
    tensors, rank, alpha, changes = _uniform(weights.modules)
    targets = tuple(sorted({module.rsplit(".", 1)[-1] for module in weights.modules}))
    exported = ExportedAdapter(
        path=out,
        name=versioned_name(version.user_id, version.number),
        user_id=version.user_id,
        number=version.number,
        served_base=served_base,
        rank=rank,
        lora_alpha=alpha,
        target_modules=targets,
        modules=len(weights.modules),
        source_sha256=version.blob_sha256,
        changes=tuple(changes),
    )
    _write_atomically(out, tensors, _config(exported), exported)
    return exported


def _uniform(
    modules: Mapping[str, LoraWeights],
) -> tuple[dict[str, torch.Tensor], int, float, list[str]]:
    """PEFT tensors with one rank and one scale for every module, and what changed."""
    rank = max(w.rank for w in modules.values())
    scales = {w.scale for w in modules.values()}
    # One scale already: keep it (alpha = scale * rank), so B needs no rescaling.
    # Several: the first module's scale is the common one, the others fold into B.
    common = next(iter(modules.values())).scale
    alpha = common * rank
    tensors, padded, folded = {}, 0, 0
    for module, w in sorted(modules.items()):
        A, B = w.A, w.B
        if w.rank < rank:
            A, B = F.pad(A, (0, 0, 0, rank - w.rank)), F.pad(B, (0, rank - w.rank))
            padded += 1
        if w.scale != common:
            B = B * (w.scale / common)
            folded += 1
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = A.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = B.contiguous()
    changes = []
    if padded:
        changes.append(f"{padded} modules padded with zeros to rank {rank}")
    if folded:
        changes.append(f"{folded} modules' own scales folded into lora_B ({len(scales)} scales)")
    return tensors, rank, alpha, changes


def _config(exported: ExportedAdapter) -> dict[str, object]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": exported.served_base,
        "r": exported.rank,
        "lora_alpha": exported.lora_alpha,
        "target_modules": list(exported.target_modules),
        "bias": "none",
        "lora_dropout": 0.0,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def _provenance(exported: ExportedAdapter) -> dict[str, object]:
    record = asdict(exported)
    record["path"] = None  # where it lies is not part of what it is
    return record


def _existing_export(out: Path, version: VersionInfo) -> ExportedAdapter | None:
    try:
        record = json.loads((out / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None
    if (
        record.get("source_sha256") != version.blob_sha256
        or record.get("user_id") != version.user_id
        or record.get("number") != version.number
        or not (out / ADAPTER_WEIGHTS).is_file()
    ):
        return None
    record |= {"path": out, "target_modules": tuple(record["target_modules"])}
    record["changes"] = tuple(record["changes"])
    return ExportedAdapter(**record)


def _write_atomically(
    out: Path,
    tensors: dict[str, torch.Tensor],
    config: dict[str, object],
    exported: ExportedAdapter,
) -> None:
    """Write into a sibling scratch directory, fsync, then rename: a reader (an engine
    loading the adapter, a second exporter) sees the whole directory or nothing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(tensors, str(scratch / ADAPTER_WEIGHTS))
        (scratch / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (scratch / PROVENANCE).write_text(json.dumps(_provenance(exported), indent=2) + "\n")
        for path in scratch.iterdir():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        scratch.chmod(0o755)
        try:
            scratch.rename(out)
        except OSError:
            # Another exporter renamed the same export into place first: keep theirs.
            if _same_export(out, exported):
                return
            raise ExportError(
                f"--to {out} was created by someone else while exporting; "
                "choose a new directory or remove it"
            ) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _same_export(out: Path, exported: ExportedAdapter) -> bool:
    try:
        record = json.loads((out / PROVENANCE).read_text())
    except (OSError, ValueError):
        return False
    return record.get("source_sha256") == exported.source_sha256

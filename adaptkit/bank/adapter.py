"""A LoRA adapter read from a PEFT-format directory into compute-ready tensors.

Read straight from ``adapter_model.safetensors`` (one read, an optional sha256, one
parse), never through PEFT: PEFT's ``load_adapter`` walks and re-wraps the whole
model (~600 ms for SmolLM2), this takes a few milliseconds.

Everything about an adapter that can be wrong is checked here, before it can
reach a forward pass: the config (only plain LoRA is supported), the base it
was built for, the modules it targets and their shapes, and finite values.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch
from safetensors.torch import load as load_safetensors

from adaptkit.errors import InputError
from adaptkit.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_digest

PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


class AdapterError(InputError):
    """An adapter cannot be used with this base model; the message names the adapter."""


@dataclass(frozen=True)
class LoraWeights:
    """One module's low-rank update: ``delta(x) = (x @ A.T @ B.T) * scale``."""

    A: torch.Tensor  # (rank, in_features)
    B: torch.Tensor  # (out_features, rank)
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


@dataclass(frozen=True)
class AdapterWeights:
    """A whole adapter in compute-ready form: module name -> LoraWeights."""

    label: str  # how errors and plans name it: "user 'alice' v3" or "shared adapter 'formal'"
    modules: dict[str, LoraWeights] = field(repr=False)
    base_model: str | None  # adapter_config.json's base_model_name_or_path
    path: Path
    sha256: str | None  # the verified digest; None when not checked (shared adapters)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor storage this adapter keeps alive (what the RAM tier budgets)."""
        storages = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for w in self.modules.values()
            for t in (w.A, w.B)
        }
        return sum(storages.values())


# One row of a batch: its adapters and the weight of each (empty: the base model alone).
RowAdapters = Sequence[tuple[AdapterWeights, float]]


@dataclass(frozen=True)
class ModuleShape:
    in_features: int
    out_features: int


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    # PEFT's rule (peft.utils.other.get_pattern_key): a key matches a module name suffix.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_config(config: dict[str, Any], label: str) -> None:
    """Refuse PEFT features whose math this bank does not implement (never silently wrong)."""
    if not isinstance(config, dict):
        raise AdapterError(f"{label}: {ADAPTER_CONFIG} must hold a JSON object")
    problems = []
    rank = config.get("r", 8)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        problems.append(f"r must be a positive integer, got {rank!r}")
    for name in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(name) or {}, dict):
            problems.append(f"{name} must be an object, got {config[name]!r}")
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, only LORA is supported")
    for flag in ("use_dora", "lora_bias", "fan_in_fan_out"):
        if config.get(flag):
            problems.append(f"{flag}=true is not supported")
    for name in ("modules_to_save", "trainable_token_indices", "layer_replication"):
        if config.get(name):
            problems.append(f"{name} is set ({config[name]!r}); only low-rank deltas are served")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        problems.append(f"lora_alpha must be a finite number, got {alpha!r}")
    if problems:
        raise AdapterError(f"{label}: " + "; ".join(problems))


_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptkit-sha256")


def _read_file(path: Path) -> bytearray:
    """The whole file in one buffer (which the fp32 tensors below then share)."""
    buffer = bytearray(path.stat().st_size)
    view, filled = memoryview(buffer), 0
    with path.open("rb", buffering=0) as handle:
        while filled < len(buffer):
            got = handle.readinto(view[filled:])
            if not got:
                break
            filled += got
    return buffer


def _parse_safetensors(blob: bytearray) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors, all values finite). An all-fp32 file (what PEFT saves for an fp32
    base) becomes views into ``blob``: no copy, one finiteness check over all values.
    Anything else goes through safetensors and is converted to fp32."""
    (length,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(bytes(blob[8 : 8 + length]))
    header.pop("__metadata__", None)
    start = 8 + length
    if start % 4 == 0 and all(info["dtype"] == "F32" for info in header.values()):
        flat = torch.frombuffer(blob, dtype=torch.float32, offset=start)
        tensors = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            tensors[name] = flat[begin // 4 : end // 4].view(info["shape"])
        # A nan or inf anywhere makes the sum non-finite: one pass, no mask allocated.
        # (A non-finite sum of finite values, i.e. overflow, is sorted out per module.)
        # numpy, single-threaded: torch's 2-thread reduction of 10 MB stalls for tens of
        # ms on a busy machine, waiting for its second thread.
        values = numpy.frombuffer(blob, dtype=numpy.float32, offset=start)
        return tensors, bool(numpy.isfinite(values.sum()))
    tensors = {k: v.float().contiguous() for k, v in load_safetensors(bytes(blob)).items()}
    return tensors, all(bool(torch.isfinite(t).all()) for t in tensors.values())


def read_adapter(
    path: Path,
    *,
    label: str,
    shapes: Mapping[str, ModuleShape],
    base_aliases: frozenset[str],
    expected_sha256: str | None = None,
    expected_config_sha256: str | None = None,
) -> AdapterWeights:
    """Read and validate the PEFT-format adapter in ``path`` against the served base.

    ``expected_sha256`` / ``expected_config_sha256``: the digests the registry recorded
    for the weights and the config; the config is checked before it is parsed.

    ``shapes`` maps the base model's adaptable module names to their shapes;
    ``base_aliases`` are the names under which the served base is known (catalogue
    name, directory, hub id). Raises ``AdapterError`` naming ``label`` on any problem.
    """
    config_file, weights_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise AdapterError(
            f"{label}: {path} is not a PEFT adapter directory (needs {ADAPTER_CONFIG} and "
            f"{ADAPTER_WEIGHTS})"
        )
    config = _read_config(config_file, label, base_aliases, expected_config_sha256)
    tensors, finite, sha256 = _read_weights(weights_file, label, expected_sha256)
    modules = _build_modules(tensors, finite, config, shapes, label)
    if not modules:
        raise AdapterError(f"{label}: {weights_file} holds no LoRA weights")
    return AdapterWeights(label, modules, config.get("base_model_name_or_path"), path, sha256)


def _read_config(
    config_file: Path, label: str, base_aliases: frozenset[str], expected_sha256: str | None
) -> dict[str, Any]:
    """``adapter_config.json``, checked: its recorded digest (before parsing), plain
    LoRA, built for the served base."""
    try:
        raw = config_file.read_bytes()
        if expected_sha256 is not None:
            check_digest(hashlib.sha256(raw).hexdigest(), expected_sha256, config_file, label)
        config = json.loads(raw)
    except (OSError, ValueError) as error:
        raise AdapterError(f"{label}: cannot read {config_file}: {error}") from error
    _check_config(config, label)
    base = config.get("base_model_name_or_path")
    if base and base not in base_aliases and Path(str(base)).name not in base_aliases:
        raise AdapterError(
            f"{label} was built for base model {base!r}, but this engine serves "
            f"{sorted(base_aliases)[0]!r}; use an adapter trained on this base"
        )
    return config


def _read_weights(
    weights_file: Path, label: str, expected_sha256: str | None
) -> tuple[dict[str, torch.Tensor], bool, str | None]:
    """(tensors, all values finite, the verified sha256 or None when none was expected)."""
    # One read serves both the integrity check and the parse; the sha256 runs on a
    # second thread (hashlib releases the GIL) while this one parses and checks values.
    blob = _read_file(weights_file)
    digest = None
    if expected_sha256 is not None:
        digest = _HASHER.submit(lambda: hashlib.sha256(blob).hexdigest())
    try:
        tensors, finite = _parse_safetensors(blob)
    finally:
        sha256 = digest.result() if digest is not None else None
    if expected_sha256 is not None:
        check_digest(sha256, expected_sha256, weights_file, label)
    return tensors, finite, sha256


def _build_modules(
    tensors: Mapping[str, torch.Tensor],
    finite: bool,
    config: Mapping[str, Any],
    shapes: Mapping[str, ModuleShape],
    label: str,
) -> dict[str, LoraWeights]:
    """Module name -> its checked ``LoraWeights`` (``finite``: no value needs a check)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key.removeprefix(PEFT_PREFIX))
        if match is None:
            raise AdapterError(f"{label}: unexpected tensor {key!r} (not a lora_A/lora_B weight)")
        parts.setdefault(match["module"], {})[match["part"]] = tensor

    rank_default, alpha_default = config.get("r", 8), float(config["lora_alpha"])
    modules: dict[str, LoraWeights] = {}
    for module, pair in sorted(parts.items()):
        if module not in shapes:
            raise AdapterError(
                f"{label} targets module {module!r}, which this base model has no adaptable "
                "linear layer for (a different architecture or base?)"
            )
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{label}: module {module!r} lacks lora_A or lora_B")
        A, B, shape = pair["A"].float(), pair["B"].float(), shapes[module]
        rank = int(A.shape[0])
        if (
            A.ndim != 2
            or B.ndim != 2
            or A.shape[1] != shape.in_features
            or B.shape != (shape.out_features, rank)
        ):
            raise AdapterError(
                f"{label}: module {module!r} has lora_A {tuple(A.shape)} and lora_B "
                f"{tuple(B.shape)}, but the base layer is {shape.in_features} -> "
                f"{shape.out_features}: the adapter was built for a different base model"
            )
        if not finite and not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise AdapterError(f"{label}: module {module!r} has non-finite (nan/inf) weights")
        declared = int(_pattern_value(config.get("rank_pattern") or {}, module, rank_default))
        if declared != rank:
            raise AdapterError(
                f"{label}: module {module!r} has rank {rank} but its config says {declared}"
            )
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha_default))
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        modules[module] = LoraWeights(A.contiguous(), B.contiguous(), scale)
    return modules

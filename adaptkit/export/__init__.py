"""Adapters out of adaptkit, into the engines people serve with: PEFT directories
that vLLM, LoRAX and SGLang load as they are, under immutable ``USER@vN`` names, and
a vLLM LoRA resolver over the registry (``adaptkit.export.vllm_resolver``, loaded by
vLLM's plugin system; it imports vLLM, so it is not imported here)."""

from adaptkit.export.names import parse_versioned_name, versioned_name
from adaptkit.export.peft_dir import PROVENANCE, ExportedAdapter, ExportError, export_version
from adaptkit.export.shapes import config_shapes, converted_base_dir, converted_base_shapes

__all__ = [
    "PROVENANCE",
    "ExportError",
    "ExportedAdapter",
    "config_shapes",
    "converted_base_dir",
    "converted_base_shapes",
    "export_version",
    "parse_versioned_name",
    "versioned_name",
]

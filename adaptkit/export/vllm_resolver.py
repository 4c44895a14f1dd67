"""A vLLM LoRA resolver that serves adaptkit's registry: ``alice@v7`` -> that version.

vLLM asks its registered resolvers for an adapter name it has not loaded yet
(``LoRAResolver.resolve_lora(base_model_name, lora_name)``). This one answers
``USER@vN`` names only: it finds version N of USER in adaptkit's registry (SQLite
or PostgreSQL), exports it into a local cache (atomically, once; the blob's sha256
checked first) and returns the ``LoRARequest`` pointing there. It returns None for
another base model, an unknown user or version, and a bare user name (vLLM would
cache that name forever, so updates would never reach the user: the app asks
adaptkit for the user's current ``USER@vN``).

Loaded by vLLM's plugin system through the ``vllm.general_plugins`` entry point
``adaptkit = adaptkit.export.vllm_resolver:register``, configured by environment:

``ADAPTKIT_VLLM_SERVED_BASE``  the name vLLM serves the base under (its ``--model``); required
``ADAPTKIT_HOME``              the adaptkit home (registry, blobs, converted base model)
``ADAPTKIT_DB``, ``ADAPTKIT_BLOBS``  where the registry lives, when not in the home
``ADAPTKIT_BASE``              the adaptkit base model name (default smollm2-135m-instruct)
``ADAPTKIT_VLLM_CACHE``        where exports are materialized (default HOME/vllm-adapters)
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from adaptkit.base_model import DEFAULT_BASE
from adaptkit.errors import AdaptkitError, UnknownUserError, UnknownVersionError
from adaptkit.export.names import parse_versioned_name
from adaptkit.export.peft_dir import export_version
from adaptkit.export.shapes import converted_base_shapes
from adaptkit.home import Home
from adaptkit.registry import Registry, open_registry

RESOLVER_NAME = "adaptkit"


class AdaptkitResolver(LoRAResolver):
    """Resolves ``USER@vN`` from an adaptkit registry into a materialized PEFT directory."""

    def __init__(
        self, registry: Registry, *, served_base: str, cache_dir: Path, shapes: dict
    ) -> None:
        self.registry = registry
        self.served_base = served_base
        self.cache_dir = cache_dir
        self.shapes = shapes

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        if base_model_name != self.served_base:
            return None
        parsed = parse_versioned_name(lora_name)
        if parsed is None:
            return None
        # Registry reads and the export are blocking I/O: keep vLLM's event loop free.
        return await asyncio.to_thread(self._resolve, lora_name, *parsed)

    def _resolve(self, lora_name: str, user_id: str, number: int) -> LoRARequest | None:
        try:
            version = self.registry.version(user_id, number)
        except (UnknownUserError, UnknownVersionError):
            return None
        # The blob's digest names the cache entry: an erased and re-created user's v7
        # is a different adapter under the same name, and must not reuse the old files.
        out = self.cache_dir / f"{lora_name}-{version.blob_sha256[:16]}"
        exported = export_version(
            self.registry, version, out, served_base=self.served_base, shapes=self.shapes
        )
        # The registry row id is unique per registry and stable: vLLM keys its
        # loaded adapters by this integer.
        return LoRARequest(
            lora_name=lora_name, lora_int_id=version.id, lora_path=str(exported.path)
        )


def resolver_from_environment() -> AdaptkitResolver:
    """The resolver ``register`` installs, configured as the module docstring says."""
    served_base = os.environ.get("ADAPTKIT_VLLM_SERVED_BASE")
    if not served_base:
        raise AdaptkitError(
            "ADAPTKIT_VLLM_SERVED_BASE is not set: set it to the model name vLLM serves "
            "(its --model), e.g. HuggingFaceTB/SmolLM2-135M-Instruct"
        )
    home = Home.resolve()
    cache = Path(os.environ.get("ADAPTKIT_VLLM_CACHE") or home.root / "vllm-adapters")
    shapes = converted_base_shapes(os.environ.get("ADAPTKIT_BASE") or DEFAULT_BASE, home)
    registry = open_registry(home)
    return AdaptkitResolver(registry, served_base=served_base, cache_dir=cache, shapes=shapes)


def register() -> None:
    """vLLM's ``vllm.general_plugins`` entry point: install the resolver."""
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, resolver_from_environment())

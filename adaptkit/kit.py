"""``AdaptKit``: the Python API app code uses (the CLI is a thin layer over it).

Example::

    kit = AdaptKit(home="~/.adaptkit")
    kit.train("alice", "users/examples/alice.jsonl")
    kit.chat("How do I get to the museum?", user="alice")

For many users in one batched forward, see ``adaptkit.bank.Engine``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from adaptkit.bank import Engine
from adaptkit.base_model import DEFAULT_BASE, BaseModel, load_base
from adaptkit.errors import InputError, UnknownUserError
from adaptkit.home import Home
from adaptkit.interactions import Interaction, interactions_digest, read_log
from adaptkit.online.rules import RULES
from adaptkit.prompting import as_messages, generate
from adaptkit.registry import Registry, VersionInfo, sha256_file
from adaptkit.registry.blobs import ADAPTER_WEIGHTS
from adaptkit.router import Request
from adaptkit.training import LoraSpec, SFTConfig, train_sft
from adaptkit.user_ids import validate_user_id


class AdaptKit:
    """One home (registry + adapter store + model cache) and one shared base model."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        base: str = DEFAULT_BASE,
        quant: str = "none",
    ) -> None:
        self.home = Home.resolve(home).ensure()
        self.base_name = base
        self.quant = quant
        self.registry = Registry(self.home.registry_url, self.home.adapters_dir)
        self._base: BaseModel | None = None

    @property
    def base(self) -> BaseModel:
        """The shared base model, loaded on first use."""
        if self._base is None:
            self._base = load_base(self.base_name, home=self.home, quant=self.quant)
        return self._base

    def train(
        self,
        user: str,
        log: str | os.PathLike[str] | Sequence[Interaction],
        *,
        lora: LoraSpec | None = None,
        config: SFTConfig | None = None,
        activate: bool = True,
        progress: bool = True,
        method: str = "sft",
        kl_anchor: bool = False,
    ) -> VersionInfo:
        """Train an adapter on ``user``'s interactions and publish it as their next version.

        ``log`` is a path to an interaction log or already-parsed interactions. The
        whole log is validated first; lines of other users are ignored. ``method``:
        sft | dpo | kto | distill | contrast (see ``adaptkit.online.rules``).
        ``kl_anchor``: add the online trainer's KL(base || adapter) on general prompts
        (any method).
        """
        validate_user_id(user)
        if method not in RULES:
            raise InputError(f"--method {method!r} is not one of {', '.join(RULES)}")
        lora = lora or LoraSpec()
        config = config or SFTConfig()
        interactions = read_log(log) if isinstance(log, (str, os.PathLike)) else list(log)
        mine = [i for i in interactions if i.user_id == user]
        if not mine:
            found = sorted({i.user_id for i in interactions})
            raise InputError(
                f"the log has no interactions of user {user!r} (it has: {', '.join(found)}); "
                "check --user"
            )
        staging = self.registry.blobs.staging_dir(user)
        try:
            if method == "sft" and not kl_anchor:
                trained = train_sft(self.base, mine, lora, config, staging, progress=progress)
            else:
                from adaptkit.online.offline import train_with_rule

                trained = train_with_rule(
                    self.base,
                    mine,
                    method,
                    lora,
                    config,
                    staging,
                    progress=progress,
                    kl_anchor=kl_anchor,
                )
            return self.registry.publish(
                user,
                trained.directory,
                method=f"{method}+kl" if kl_anchor else method,
                base_model=self.base_name,
                data_digest=interactions_digest(mine),
                metrics=trained.metrics,
                config={"lora": asdict(lora), "sft": asdict(config), "quant": self.quant},
                activate=activate,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            self._drop_base_if_quantized()

    def adapter_for(self, user: str) -> VersionInfo:
        """The user's active version, checked; never silently nothing or someone else's."""
        version = self.registry.active_version(user)
        if version is None:
            raise UnknownUserError(
                f"user {user!r} has no active adapter version; see `adaptkit versions {user}`"
            )
        if version.base_model != self.base_name:
            raise InputError(
                f"user {user!r}'s active adapter (v{version.number}) was trained on base "
                f"{version.base_model!r}, not {self.base_name!r}; pass --base {version.base_model}"
            )
        weights = Path(version.blob_path) / ADAPTER_WEIGHTS
        if not weights.is_file() or sha256_file(weights) != version.blob_sha256:
            raise InputError(
                f"adapter blob of {user!r} v{version.number} at {version.blob_path} is missing or "
                "does not match its recorded sha256; activate another version"
            )
        return version

    def chat(
        self,
        prompt: str | Sequence[dict],
        *,
        user: str | None = None,
        max_new_tokens: int = 64,
    ) -> str:
        """Answer one prompt (or chat ``messages``) as ``user``'s model, or the base model."""
        return self.chat_many([prompt], user=user, max_new_tokens=max_new_tokens)[0]

    def chat_many(
        self,
        prompts: Sequence[str | Sequence[dict]],
        *,
        user: str | None = None,
        max_new_tokens: int = 64,
    ) -> list[str]:
        """Answer several prompts for one user (or the base model) in one batch."""
        conversations = [as_messages(p) for p in prompts]
        if user is None:
            return generate(
                self.base.model, self.base.tokenizer, conversations, max_new_tokens=max_new_tokens
            )
        self.adapter_for(user)
        # The bank's engine, not PEFT: it applies the adapter as a per-row delta and
        # gives the base back untouched, exact on int8/nf4 bases too.
        with Engine(self.base, self.registry) as engine:
            results = engine.generate(
                [Request(prompt=conversation, user=user) for conversation in conversations],
                max_new_tokens=max_new_tokens,
            )
        return [result.text for result in results]

    def _drop_base_if_quantized(self) -> None:
        """Forget a quantized base after training wrapped and unwrapped it with PEFT.

        PEFT's ``unload()`` restores an fp32 base exactly (tested), but not a
        bitsandbytes nf4 one: SmolLM2's nf4 logits move by ~40 after wrapping +
        ``unload``. Reloading (~3 s) is the safe answer.
        """
        if self.quant != "none":
            self._base = None

"""``AdaptKit``: the Python API app code uses (the CLI is a thin layer over it).

Example::

    with AdaptKit(home="~/.adaptkit") as kit:
        kit.train("alice", "users/examples/alice.jsonl")
        kit.chat("How do I get to the museum?", user="alice")
        kit.engine.generate([Request("Hi", user="alice"), Request("Hi", user="bob")])

One kit holds one home (registry + adapter store + model cache), the served base
model and one long-lived ``Engine`` over it: every answer, the base model's
included, goes through that engine, so the bank's RAM tier lasts across calls.
Training runs on a second copy of the base (loaded on the first ``train``): the
engine's copy is never touched by PEFT.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict

from adaptkit.bank import DEFAULT_CACHE_BYTES, DEFAULT_SHARED_DIR, Engine, Repetition
from adaptkit.base_model import DEFAULT_BASE, BaseModel, load_base
from adaptkit.errors import InputError, UnknownUserError
from adaptkit.home import Home
from adaptkit.interactions import Interaction, interactions_digest, read_log
from adaptkit.learning import RULES, LoraSpec
from adaptkit.registry import VersionInfo, open_registry
from adaptkit.router import Request, RoutingPolicy
from adaptkit.training import Fitter, TrainConfig
from adaptkit.user_ids import validate_user_id


class AdaptKit:
    """One home, one served base model and its engine; a fitter on a second copy."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        base: str = DEFAULT_BASE,
        quant: str = "none",
        policy: RoutingPolicy | None = None,
        shared_dir: str | os.PathLike[str] = DEFAULT_SHARED_DIR,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        db: str | None = None,
        blobs: str | None = None,
    ) -> None:
        """``policy``, ``shared_dir`` (the library of shared adapters) and ``cache_bytes``
        (the bank's RAM tier) configure the engine (``adaptkit.bank.Engine``). ``db``: the
        registry's database URL (default ``$ADAPTKIT_DB``, else SQLite in the home);
        ``blobs``: the adapter blob store (default ``$ADAPTKIT_BLOBS``, else in the home);
        several processes and machines may share both."""
        self.home = Home.resolve(home).ensure()
        self.base_name = base
        self.quant = quant
        self._engine_options = {
            "policy": policy,
            "shared_dir": shared_dir,
            "cache_bytes": cache_bytes,
        }
        self.registry = open_registry(self.home, db=db, blobs=blobs)
        self._base: BaseModel | None = None
        self._engine: Engine | None = None
        self._fitter: Fitter | None = None

    @property
    def base(self) -> BaseModel:
        """The served base model, loaded on first use."""
        if self._base is None:
            self._base = self._load_base()
        return self._base

    @property
    def engine(self) -> Engine:
        """The engine over the served base, opened on first use and kept until ``close``."""
        if self._engine is None:
            self._engine = Engine(self.base, self.registry, **self._engine_options)
        return self._engine

    def _load_base(self) -> BaseModel:
        return load_base(self.base_name, home=self.home, quant=self.quant)

    def close(self) -> None:
        """Close the engine (the base model's layers are given back unwrapped)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> AdaptKit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def train(
        self,
        user: str,
        log: str | os.PathLike[str] | Sequence[Interaction],
        *,
        lora: LoraSpec | None = None,
        config: TrainConfig | None = None,
        activate: bool = True,
        progress: bool = True,
        method: str = "sft",
        kl_anchor: bool = False,
    ) -> VersionInfo:
        """Train an adapter on ``user``'s interactions and publish it as their next version.

        ``log`` is a path to an interaction log or already-parsed interactions. The
        whole log is validated first; lines of other users are ignored. ``method``:
        sft | dpo | kto | distill | contrast | principles (see ``adaptkit.learning.rules``).
        ``kl_anchor``: add the online trainer's KL(base || adapter) on general prompts
        (any method).
        """
        validate_user_id(user)
        if method not in RULES:
            raise InputError(f"--method {method!r} is not one of {', '.join(RULES)}")
        lora = lora or LoraSpec()
        config = config or TrainConfig()
        interactions = read_log(log) if isinstance(log, (str, os.PathLike)) else list(log)
        mine = [i for i in interactions if i.user_id == user]
        if not mine:
            found = sorted({i.user_id for i in interactions})
            raise InputError(
                f"the log has no interactions of user {user!r} (it has: {', '.join(found)}); "
                "check --user"
            )
        if self._fitter is None:
            self._fitter = Fitter(self._load_base())
        try:
            with self.registry.staging(user) as staging:
                trained = self._fitter.fit(
                    mine, method, lora, config, staging, kl_anchor=kl_anchor, progress=progress
                )
                return self.registry.publish(
                    user,
                    trained.directory,
                    method=f"{method}+kl" if kl_anchor else method,
                    base_model=self.base_name,
                    data_digest=interactions_digest(mine),
                    metrics=trained.metrics,
                    config={"lora": asdict(lora), "train": asdict(config), "quant": self.quant},
                    activate=activate,
                )
        finally:
            if self.quant != "none":
                # PEFT's ``unload()`` restores an fp32 base exactly (tested), but not a
                # bitsandbytes nf4 one (SmolLM2's logits move by ~40): reload it (~3 s).
                self._fitter = None

    def adapter_for(self, user: str) -> VersionInfo:
        """The user's active version; never silently nothing or someone else's. (Its blob
        is verified when the engine loads it.)"""
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
        return version

    def chat(
        self,
        prompt: str | Sequence[dict],
        *,
        user: str | None = None,
        max_new_tokens: int = 64,
        repetition: Repetition | None = None,
    ) -> str:
        """Answer one prompt (or chat ``messages``) as ``user``'s model, or the base model.
        ``repetition``: repetition control (``Repetition(repetition_penalty=1.2)``, ...;
        docs/bank.md); None: plain greedy decoding."""
        return self.chat_many(
            [prompt], user=user, max_new_tokens=max_new_tokens, repetition=repetition
        )[0]

    def chat_many(
        self,
        prompts: Sequence[str | Sequence[dict]],
        *,
        user: str | None = None,
        max_new_tokens: int = 64,
        repetition: Repetition | None = None,
    ) -> list[str]:
        """Answer several prompts for one user (or the base model) in one batch, each
        under ``repetition`` control (None: none)."""
        if user is not None:
            self.adapter_for(user)
        results = self.engine.generate(
            [Request(prompt=prompt, user=user) for prompt in prompts],
            max_new_tokens=max_new_tokens,
            repetition=repetition,
        )
        return [result.text or "" for result in results]

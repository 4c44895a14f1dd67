"""``Router.plan``: turn each request into a Plan (base, adapter, merged, composed, cold start).

Planning reads the registry (the user's active version: a cheap SQL lookup, so a
newly published version is used on the very next request) and the shared
library's folder names. It touches no tensors: every error it can find is found
here, before anything is loaded or computed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from adaptkit.errors import AdaptkitError, InputError, UnknownUserError
from adaptkit.registry import VersionInfo
from adaptkit.router.plan import Plan, PlannedAdapter
from adaptkit.router.policy import RoutingPolicy, check_weights
from adaptkit.router.request import Request

logger = logging.getLogger("adaptkit.router")


class AdapterCatalog(Protocol):
    """What the router needs to know about adapters (AdapterBank provides it)."""

    def active_version(self, user: str) -> VersionInfo | None: ...

    def version(self, user: str, number: int) -> VersionInfo: ...

    def shared_path(self, name: str) -> Path: ...


class Router:
    def __init__(
        self,
        catalog: AdapterCatalog,
        policy: RoutingPolicy | None = None,
        *,
        merge_refusal: str | None = None,
        base: str = "fp32",
    ) -> None:
        """``merge_refusal``: why this base cannot be merged into (None: it can).
        ``base``: the base's kernels (``BaseModel.backend``), named in every plan."""
        self.catalog = catalog
        self.base = base
        self.policy = policy or RoutingPolicy()
        self.merge_refusal = merge_refusal
        if self.policy.cold_start is not None:
            catalog.shared_path(self.policy.cold_start)  # fail at start-up, not per request
        for name in self.policy.default_compose:
            catalog.shared_path(name)

    def _shared(self, compose: dict[str, float]) -> tuple[PlannedAdapter, ...]:
        for name in compose:
            self.catalog.shared_path(name)  # raises naming the unknown adapter
        return tuple(PlannedAdapter("shared", name, float(w)) for name, w in compose.items())

    def plan(self, request: Request) -> Plan:
        """The plan for one request on its own (``plan_batch`` may upgrade it to merged)."""
        requested = dict(request.compose or {})
        check_weights(requested, "compose")
        check_weights({str(request.user): request.user_weight}, "user_weight")
        compose = requested or dict(self.policy.default_compose)
        why_compose = "request's compose" if requested else "policy's default_compose"

        if request.user is None:
            if request.version is not None:
                raise InputError(
                    f"version={request.version!r} names no user's adapter: set user= too"
                )
            if compose:
                return Plan("composed", None, self._shared(compose), f"no user; {why_compose}")
            return Plan("base", None, (), "no user")

        user = request.user
        if request.version is not None:
            # A pinned version is served or is an error: never the active one or the
            # cold start instead.
            version = self.catalog.version(user, _version_number(request))
            why = f"pinned version v{version.number}"
        else:
            try:
                version = self.catalog.active_version(user)
            except UnknownUserError:
                if self.policy.unknown_users == "error":
                    raise
                version, missing = None, "is not in the registry"
            else:
                missing = "has no active adapter version yet"
            if version is None:
                cold = self.policy.cold_start
                adapters = self._shared(({cold: 1.0} if cold else {}) | requested)
                target = f"shared adapter {cold!r}" if cold else "the base model"
                return Plan("cold_start", user, adapters, f"user {user!r} {missing}: {target}")
            why = f"user's active version v{version.number}"

        mine = PlannedAdapter(
            "user", user, float(request.user_weight), version.number, version.blob_sha256, version
        )
        if compose:
            shared = self._shared(compose)
            return Plan("composed", user, (mine, *shared), why_compose)
        return Plan("adapter", user, (mine,), why)

    def plan_batch(
        self, requests: Sequence[Request], *, max_new_tokens: int
    ) -> list[Plan | AdaptkitError]:
        """One plan per request, or the error that request has (other rows are unaffected).

        A batch whose rows all share one user adapter (or one composition) and that
        generates at least ``policy.merge_min_new_tokens`` tokens is a long single-user
        stream: its plans become ``merged`` (or say why not, on a quantized base).
        """
        plans: list[Plan | AdaptkitError] = []
        for index, request in enumerate(requests):
            try:
                plans.append(self.plan(request))
            except AdaptkitError as error:
                plans.append(row_error(error, index, request))
        threshold = self.policy.merge_min_new_tokens
        good = [p for p in plans if isinstance(p, Plan)]
        if (
            threshold is not None
            and max_new_tokens >= threshold
            and good
            and len(good) == len(plans)
            and good[0].kind in ("adapter", "composed")
            and all(p.adapters == good[0].adapters for p in good)
        ):
            if self.merge_refusal is None:
                reason = f"one adapter set for the whole batch, {max_new_tokens} new tokens"
                plans = [Plan("merged", p.user, p.adapters, f"{p.reason}; {reason}") for p in good]
            else:
                plans = [
                    Plan(
                        p.kind, p.user, p.adapters, f"{p.reason}; not merged: {self.merge_refusal}"
                    )
                    for p in good
                ]
        plans = [replace(p, base=self.base) if isinstance(p, Plan) else p for p in plans]
        for index, plan in enumerate(plans):
            if isinstance(plan, Plan):
                logger.info("request %d (user %r): %s", index, plan.user, plan.describe())
            else:
                logger.warning("%s", plan)
        return plans


def _version_number(request: Request) -> int:
    number = request.version
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise InputError(
            f"version must be a positive version number of user {request.user!r}, got {number!r}"
        )
    return number


def row_error(error: AdaptkitError, index: int, request: Request) -> AdaptkitError:
    """The same kind of error, its message prefixed with the row it belongs to."""
    message = f"request {index} (user {request.user!r}): {error}"
    try:
        return type(error)(message)
    except TypeError:  # an error class with a structured constructor
        return InputError(message)


def first_error(rows: Sequence[object]) -> AdaptkitError | None:
    """The batch's error (all rows' problems in one message), or None if every row is fine."""
    errors = [row for row in rows if isinstance(row, AdaptkitError)]
    if not errors:
        return None
    if len(errors) == 1:
        return errors[0]
    return InputError("; ".join(str(e) for e in errors))

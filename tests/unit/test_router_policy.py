"""Router plans from a policy, against a fake adapter catalog (no model, no tensors)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pytest

from adaptkit.bank.adapter import AdapterError
from adaptkit.errors import InputError, UnknownUserError, UnknownVersionError
from adaptkit.registry import VersionInfo
from adaptkit.router import Plan, Request, Router, RoutingPolicy
from adaptkit.router.router import first_error


def version(user: str, number: int) -> VersionInfo:
    return VersionInfo(
        id=number, user_id=user, number=number, parent_number=None,
        created_at=datetime.now(timezone.utc), method="sft", base_model="tiny",
        data_digest="0", metrics={}, config={}, blob_sha256=f"sha-{user}-{number}",
        blob_path=Path(f"/blobs/{user}/v{number}"), status="active", status_reason="",
    )  # fmt: skip


class FakeCatalog:
    def __init__(self) -> None:
        self.versions: dict[str, VersionInfo | None] = {"alice": version("alice", 3), "new": None}
        self.shared = {"formal", "brief"}

    def active_version(self, user: str) -> VersionInfo | None:
        if user not in self.versions:
            raise UnknownUserError(f"unknown user {user!r}")
        return self.versions[user]

    def version(self, user: str, number: int) -> VersionInfo:
        active = self.active_version(user)
        if active is None or number > active.number:
            raise UnknownVersionError(f"user {user!r} has no version {number}")
        return version(user, number)

    def shared_path(self, name: str) -> Path:
        if name not in self.shared:
            raise AdapterError(f"unknown shared adapter {name!r}; known: {sorted(self.shared)}")
        return Path("/shared") / name


def test_each_kind_of_plan() -> None:
    router = Router(FakeCatalog(), RoutingPolicy(cold_start="formal"))
    assert router.plan(Request("hi")).kind == "base"
    mine = router.plan(Request("hi", user="alice"))
    assert (mine.kind, mine.adapters[0].version, mine.adapters[0].sha256) == (
        "adapter", 3, "sha-alice-3",
    )  # fmt: skip
    composed = router.plan(Request("hi", user="alice", compose={"brief": 0.25}, user_weight=0.5))
    assert composed.kind == "composed"
    assert [(a.source, a.name, a.weight) for a in composed.adapters] == [
        ("user", "alice", 0.5), ("shared", "brief", 0.25),
    ]  # fmt: skip
    cold = router.plan(Request("hi", user="new"))
    assert cold.kind == "cold_start" and [a.name for a in cold.adapters] == ["formal"]
    shared_only = router.plan(Request("hi", compose={"formal": 1.0}))
    assert shared_only.kind == "composed" and shared_only.user is None


def test_a_pinned_version_is_served_instead_of_the_active_one() -> None:
    router = Router(FakeCatalog(), RoutingPolicy(default_compose={"formal": 0.3}))
    pinned = router.plan(Request("hi", user="alice", version=2))
    assert pinned.kind == "composed" and "default_compose" in pinned.reason
    assert [(a.name, a.version, a.sha256) for a in pinned.adapters] == [
        ("alice", 2, "sha-alice-2"), ("formal", None, None),
    ]  # fmt: skip
    alone = Router(FakeCatalog()).plan(Request("hi", user="alice", version=1))
    assert (alone.kind, alone.adapters[0].version, alone.reason) == (
        "adapter",
        1,
        "pinned version v1",
    )


def test_a_pinned_version_that_does_not_exist_is_an_error_never_a_fallback() -> None:
    lenient = Router(FakeCatalog(), RoutingPolicy(cold_start="formal", unknown_users="cold_start"))
    with pytest.raises(UnknownVersionError, match="'alice' has no version 7"):
        lenient.plan(Request("hi", user="alice", version=7))
    with pytest.raises(UnknownVersionError, match="'new' has no version 1"):
        lenient.plan(Request("hi", user="new", version=1))  # known, but no adapter yet
    with pytest.raises(UnknownUserError, match="'zed'"):
        lenient.plan(Request("hi", user="zed", version=1))
    with pytest.raises(InputError, match="version=2 names no user's adapter: set user="):
        lenient.plan(Request("hi", version=2))
    for bad in (0, -1, "2", True):
        with pytest.raises(InputError, match=f"version must be a positive.*got {bad!r}"):
            lenient.plan(Request("hi", user="alice", version=bad))


def test_default_compose_applies_only_when_the_request_names_none() -> None:
    router = Router(FakeCatalog(), RoutingPolicy(default_compose={"formal": 0.3}))
    default = router.plan(Request("hi", user="alice"))
    assert [a.name for a in default.adapters] == ["alice", "formal"]
    assert "default_compose" in default.reason
    own = router.plan(Request("hi", user="alice", compose={"brief": 1.0}))
    assert [a.name for a in own.adapters] == ["alice", "brief"]


def test_unknown_user_is_an_error_unless_the_policy_cold_starts_it() -> None:
    with pytest.raises(UnknownUserError, match="'zed'"):
        Router(FakeCatalog()).plan(Request("hi", user="zed"))
    plan = Router(FakeCatalog(), RoutingPolicy(unknown_users="cold_start")).plan(
        Request("hi", user="zed")
    )
    assert plan.kind == "cold_start" and plan.adapters == ()


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf, "1", True])
def test_non_finite_or_non_numeric_weights_name_the_adapter(weight: object) -> None:
    router = Router(FakeCatalog())
    with pytest.raises(InputError, match="'brief'"):
        router.plan(Request("hi", user="alice", compose={"brief": weight}))


def test_unknown_shared_adapter_is_named_with_the_known_ones() -> None:
    with pytest.raises(AdapterError, match="'casual'.*brief"):
        Router(FakeCatalog()).plan(Request("hi", user="alice", compose={"casual": 1.0}))


def test_policy_is_validated_at_construction() -> None:
    with pytest.raises(InputError, match="unknown_users"):
        RoutingPolicy(unknown_users="ignore")
    with pytest.raises(InputError, match="merge_min_new_tokens"):
        RoutingPolicy(merge_min_new_tokens=0)
    with pytest.raises(InputError, match="'x'"):
        RoutingPolicy(default_compose={"x": math.nan})
    with pytest.raises(AdapterError, match="'missing'"):
        Router(FakeCatalog(), RoutingPolicy(cold_start="missing"))


def test_batch_plans_merge_a_long_single_user_stream() -> None:
    router = Router(FakeCatalog(), RoutingPolicy(merge_min_new_tokens=100))
    rows = [Request("a", user="alice"), Request("b", user="alice")]
    assert {p.kind for p in router.plan_batch(rows, max_new_tokens=100)} == {"merged"}
    assert {p.kind for p in router.plan_batch(rows, max_new_tokens=99)} == {"adapter"}
    mixed = rows + [Request("c")]
    assert [p.kind for p in router.plan_batch(mixed, max_new_tokens=500)] == [
        "adapter", "adapter", "base",
    ]  # fmt: skip


def test_quantized_base_plans_say_why_they_are_not_merged() -> None:
    router = Router(FakeCatalog(), RoutingPolicy(merge_min_new_tokens=1), merge_refusal="nf4 base")
    plan = router.plan_batch([Request("a", user="alice")], max_new_tokens=10)[0]
    assert plan.kind == "adapter" and "not merged: nf4 base" in plan.reason


def test_batch_errors_name_their_row_and_leave_other_plans_alone() -> None:
    router = Router(FakeCatalog())
    plans = router.plan_batch(
        [Request("a", user="alice"), Request("b", user="zed"), Request("c", user="alice")],
        max_new_tokens=8,
    )
    assert isinstance(plans[0], Plan) and isinstance(plans[2], Plan)
    assert isinstance(plans[1], UnknownUserError) and "request 1 (user 'zed')" in str(plans[1])
    assert first_error(plans) is plans[1]
    assert first_error(plans[:1]) is None


def test_plan_to_dict_is_plain_data() -> None:
    plan = Router(FakeCatalog()).plan(Request("hi", user="alice", compose={"brief": 0.5}))
    data = plan.to_dict()
    assert data["kind"] == "composed" and data["adapters"][1] == {
        "source": "shared", "name": "brief", "weight": 0.5, "version": None, "sha256": None,
    }  # fmt: skip
    assert "alice v3 + shared brief x0.5" in plan.describe()

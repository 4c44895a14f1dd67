"""The router: for each request, a plan (base, adapter, merged, composed, cold start)."""

from adaptkit.router.plan import Plan, PlanKind, PlannedAdapter
from adaptkit.router.policy import RoutingPolicy
from adaptkit.router.request import Request
from adaptkit.router.router import AdapterCatalog, Router, first_error, row_error

__all__ = [
    "AdapterCatalog",
    "Plan",
    "PlanKind",
    "PlannedAdapter",
    "Request",
    "Router",
    "RoutingPolicy",
    "first_error",
    "row_error",
]

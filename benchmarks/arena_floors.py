"""Check an arena report against the floors set for the full bundled suite.

    python benchmarks/arena_floors.py --report OUT/report.json [--json FLOORS.json]

The floors hold for the full bundled suite (``adaptkit arena run --out OUT``: 10 users,
SmolLM2-135M fp32, a 2-core CPU):

- adapter success >= 0.8: each user's own adapter answers their requests;
- adapter minus memory >= 0.2: the adapter beats retrieving history into the prompt;
- probe retention >= 0.95: the adapters keep the base model's general answers;
- leakage <= 0.05: one user's adapter rarely answers with another user's habits;
- wall seconds <= 900: the whole run, training included, as the report records it.

Prints ``{"report", "suite", "values", "thresholds", "met", "all_met"}`` as JSON
(``--json`` also writes it to a file). Exit status: 0 when every floor is met, 1 when
one is missed, 2 when the report cannot be read. The report's own numbers are the
user's results; the floors are this repository's bar for its default settings, so they
live here and not in ``report.json``. The verdict on the committed bundled report is in
benchmarks/results/README.md. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

FLOORS: dict[str, float] = {
    "adapter_success_min": 0.8,
    "adapter_minus_memory_min": 0.2,
    "retention_min": 0.95,
    "leakage_max": 0.05,
    "wall_seconds_max": 900.0,
}

# The bundled suite's path as a report records it (adaptkit.arena.report.portable_path).
BUNDLED_SUITE = "adaptkit/arena/data/starter_suite.jsonl"
BUNDLED_USERS = 10


def _success(report: dict[str, Any], condition: str) -> float | None:
    return report.get("conditions", {}).get(condition, {}).get("success")


def check_floors(report: dict[str, Any], floors: dict[str, float] = FLOORS) -> dict[str, Any]:
    """Values, thresholds and a verdict per floor for a ``report.json`` summary.

    A value the report lacks (no ``memory`` condition run, no probes) misses its floor.
    """
    adapter = _success(report, "adapter")
    memory = _success(report, "memory")
    retention = report.get("retention", {}).get("retention")
    leakage = report.get("leakage", {}).get("rate")
    wall = report.get("run", {}).get("wall_seconds")
    margin = None if adapter is None or memory is None else round(adapter - memory, 4)
    values = {
        "adapter_success": adapter,
        "adapter_minus_memory": margin,
        "retention": retention,
        "leakage": leakage,
        "wall_seconds": wall,
    }
    met = {
        "adapter_success": adapter is not None and adapter >= floors["adapter_success_min"],
        "adapter_minus_memory": margin is not None and margin >= floors["adapter_minus_memory_min"],
        "retention": retention is not None and retention >= floors["retention_min"],
        "leakage": leakage is not None and leakage <= floors["leakage_max"],
        "wall_seconds": wall is not None and wall <= floors["wall_seconds_max"],
    }
    run = report.get("run", {})
    suite = {
        "episodes": run.get("episodes"),
        "users": len(run.get("users", [])),
        "quick": bool(run.get("quick")),
    }
    suite["full_bundled_suite"] = (
        suite["episodes"] == BUNDLED_SUITE
        and suite["users"] == BUNDLED_USERS
        and not suite["quick"]
    )
    return {
        "suite": suite,
        "values": values,
        "thresholds": dict(floors),
        "met": met,
        "all_met": all(met.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--report", type=Path, required=True, help="an arena run's report.json")
    parser.add_argument("--json", type=Path, help="also write the verdict to this file")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
    except (OSError, ValueError) as error:
        print(f"error: --report {args.report}: {error}", file=sys.stderr)
        return 2
    if not isinstance(report, dict) or "conditions" not in report:
        print(f"error: --report {args.report}: not an arena report.json", file=sys.stderr)
        return 2
    verdict = {"report": str(args.report), **check_floors(report)}
    text = json.dumps(verdict, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    if not verdict["suite"]["full_bundled_suite"]:
        print(
            "note: the floors are set for the full bundled suite; this report is "
            f"{verdict['suite']}",
            file=sys.stderr,
        )
    return 0 if verdict["all_met"] else 1


if __name__ == "__main__":
    sys.exit(main())

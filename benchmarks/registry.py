"""Registry benchmark: what every request pays, and publishing under concurrency.

    python benchmarks/registry.py --json OUT.json [--previous CHECKOUT]

On SQLite (a file) and PostgreSQL (127.0.0.1:5432, a database made for the run and
dropped after it), a registry of 10,000 users x 5 versions (rows written in bulk; the
lookups read rows only) is measured:

* ``lookup_ms`` p50/p99: ``Registry.active_version(user)`` of random users, what the
  router asks on every request; next to it the same answer by one hand-written SQL
  query through the raw driver (``raw_sql_lookup_ms``: the floor any ORM pays over);
* ``versions_ms`` p50: ``Registry.versions(user)`` (5 versions);
* ``publish``: versions per second with 1 and with 4 publisher processes, each
  publishing real blobs (written, fsynced, renamed) for its own users; median of
  ``--repeats`` windows; afterwards every version is checked (none lost, numbers
  contiguous, every blob verified);
* ``erase_ms`` p50: ``Registry.erase`` of users with 5 published versions and feedback.

``--previous CHECKOUT`` (a checkout of the previous release, e.g. ``git worktree add
../prev 377180a``): its registry is measured in the same run on SQLite (lookup and
one-publisher publish), the peer a user of that release has. Floors: lookup p50 <= 1 ms
on SQLite and <= 2 ms on PostgreSQL; 4 publishers lose nothing and reach >= 2x one
publisher's throughput on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from sqlalchemy import insert, text, update  # noqa: E402

from adaptkit.feedback import FeedbackEvent, FeedbackLog  # noqa: E402
from adaptkit.registry import Registry  # noqa: E402
from adaptkit.registry.schema import AdapterVersionRow, UserRow, utc_now  # noqa: E402
from registry_support import (  # noqa: E402
    invariant_violations,
    postgres_database,
    publish_bytes,
)

USERS, VERSIONS = 10_000, 5
_fork = multiprocessing.get_context("fork")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_ms(call: Callable[[], object], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def populate(registry: Registry) -> None:
    """10,000 users x 5 versions, in bulk (the lookups read rows, never blobs)."""
    now = utc_now()
    with registry.transaction() as session:
        session.execute(
            insert(UserRow), [{"id": f"user{u:05d}", "created_at": now} for u in range(USERS)]
        )
        rows = [
            {
                "user_id": f"user{u:05d}",
                "number": n,
                "created_at": now,
                "method": "sft",
                "base_model": "smollm2-135m-instruct",
                "data_digest": "0" * 64,
                "metrics": {"loss_last": 0.5},
                "config": {"steps": 8},
                "blob_sha256": f"{u:032d}{n:032d}",
                "config_sha256": "c" * 64,
                "blob_path": f"user{u:05d}/sha256/{u:032d}{n:032d}",
                "status": "active" if n == VERSIONS else "retired",
                "status_reason": "",
                "pinned": False,
            }
            for u in range(USERS)
            for n in range(1, VERSIONS + 1)
        ]
        session.execute(insert(AdapterVersionRow), rows)
    with registry.transaction() as session:
        # Rows were inserted user by user, number by number: the parent is the row before.
        session.execute(text("UPDATE adapter_versions SET parent_id = id - 1 WHERE number > 1"))
        session.execute(
            update(UserRow).values(
                active_version_id=(
                    AdapterVersionRow.__table__.select()
                    .with_only_columns(AdapterVersionRow.id)
                    .where(
                        AdapterVersionRow.user_id == UserRow.id,
                        AdapterVersionRow.number == VERSIONS,
                    )
                    .scalar_subquery()
                )
            )
        )


def raw_lookup(url: str) -> Callable[[str], object]:
    """The active version by one hand-written query through the plain driver."""
    query = (
        "SELECT v.* FROM users u JOIN adapter_versions v ON v.id = u.active_version_id "
        "WHERE u.id = {}"
    )
    if url.startswith("sqlite"):
        import sqlite3

        connection = sqlite3.connect(url.removeprefix("sqlite:///"))
        return lambda user: connection.execute(query.format("?"), (user,)).fetchone()
    import psycopg

    connection = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    connection.autocommit = True
    return lambda user: connection.execute(query.format("%s"), (user,)).fetchone()


def _publisher(url: str, root: str, name: str, count: int, barrier, done) -> None:
    registry = Registry(url, Path(root))
    payloads = [os.urandom(4096) for _ in range(count)]
    barrier.wait(timeout=120)
    began = time.perf_counter()
    for index, payload in enumerate(payloads):
        publish_bytes(registry, f"{name}-u{index % 4}", payload)
    done.put(time.perf_counter() - began)


def publish_rate(url: str, root: Path, publishers: int, count: int, tag: str) -> float:
    """Versions per second of ``publishers`` processes publishing ``count`` each at once."""
    barrier, done = _fork.Barrier(publishers + 1), _fork.Queue()
    processes = [
        _fork.Process(target=_publisher, args=(url, str(root), f"{tag}p{i}", count, barrier, done))
        for i in range(publishers)
    ]
    for process in processes:
        process.start()
    barrier.wait(timeout=120)
    began = time.perf_counter()
    for process in processes:
        process.join(timeout=600)
        if process.exitcode != 0:
            raise RuntimeError(f"a publisher failed with exit code {process.exitcode}")
    wall = time.perf_counter() - began
    return publishers * count / wall


def erase_times(registry: Registry, users: int) -> list[float]:
    log = FeedbackLog(registry)
    samples = []
    for index in range(users):
        user = f"gone{index}"
        for _ in range(VERSIONS):
            publish_bytes(registry, user, os.urandom(4096))
        request = log.record_completion(user, "Lunch?", "Soup.")
        log.record(FeedbackEvent(user_id=user, kind="up", request_id=request.id))
        began = time.perf_counter()
        registry.erase(user, actor="benchmark")
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def measure(url: str, root: Path, args: argparse.Namespace) -> dict:
    registry = Registry(url, root)
    began = time.perf_counter()
    populate(registry)
    populate_s = time.perf_counter() - began
    rng = random.Random(0)
    users = [f"user{rng.randrange(USERS):05d}" for _ in range(args.lookups)]
    cursor = iter(users * 2)
    registry.active_version(users[0])  # warm the pool
    lookup = timed_ms(lambda: registry.active_version(next(cursor)), args.lookups)
    raw = raw_lookup(url)
    cursor = iter(users * 2)
    raw_ms = timed_ms(lambda: raw(next(cursor)), args.lookups)
    cursor = iter(users * 2)
    versions = timed_ms(lambda: registry.versions(next(cursor)), args.lookups // 4)

    one = [publish_rate(url, root, 1, args.publishes, f"r{r}a") for r in range(args.repeats)]
    four = [publish_rate(url, root, 4, args.publishes, f"r{r}b") for r in range(args.repeats)]
    expected = args.repeats * args.publishes * 5
    published = sum(
        len(registry.versions(u.id)) for u in registry.users() if not u.id.startswith("user")
    )
    violations = invariant_violations_of_published(registry)
    erase = erase_times(registry, args.erasures)
    return {
        "populate_s": round(populate_s, 1),
        "lookup_ms": {"p50": percentile(lookup, 0.5), "p99": percentile(lookup, 0.99)},
        "raw_sql_lookup_ms": {"p50": percentile(raw_ms, 0.5), "p99": percentile(raw_ms, 0.99)},
        "lookup_over_raw_sql": percentile(lookup, 0.5) / percentile(raw_ms, 0.5),
        "versions_ms": {"p50": percentile(versions, 0.5)},
        "publish": {
            "per_publisher": args.publishes,
            "repeats": args.repeats,
            "one_publisher_per_s": statistics.median(one),
            "four_publishers_per_s": statistics.median(four),
            "four_over_one": statistics.median(four) / statistics.median(one),
            "windows_one": one,
            "windows_four": four,
            "versions_expected": expected,
            "versions_found": published,
            "lost": expected - published,
            "invariant_violations": violations,
        },
        "erase_ms": {"p50": percentile(erase, 0.5), "users": len(erase)},
    }


def invariant_violations_of_published(registry: Registry) -> int:
    """Checks only the benchmark's real blobs (the bulk rows have none on disk)."""
    problems = [p for p in invariant_violations(registry) if not p.startswith("user")]
    return len(problems)


def previous_release(checkout: Path, args: argparse.Namespace, work: Path) -> dict:
    """The previous release's registry on SQLite, measured by its own code."""
    script = f"""
import json, os, random, sys, time
from pathlib import Path
sys.path.insert(0, {str(REPO / "tests")!r})
from adaptkit.registry import Registry
root = Path({str(work)!r})
registry = Registry(f"sqlite:///{{root / 'prev.db'}}", root / "adapters")
def stage():
    staged = root / "adapters" / ".staging" / os.urandom(8).hex()
    staged.mkdir(parents=True)
    (staged / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (staged / "adapter_config.json").write_text('{{"r": 8}}')
    return staged
began = time.perf_counter()
for index in range({args.publishes}):
    registry.publish(f"u{{index % 4}}", stage(), method="sft", base_model="b",
                     data_digest="0" * 64, metrics={{}}, config={{}})
rate = {args.publishes} / (time.perf_counter() - began)
for user in range(200):
    for _ in range(2):
        registry.publish(f"x{{user}}", stage(), method="sft", base_model="b",
                         data_digest="0" * 64, metrics={{}}, config={{}})
samples = []
for _ in range({args.lookups}):
    user = f"x{{random.randrange(200)}}"
    t = time.perf_counter(); registry.active_version(user)
    samples.append((time.perf_counter() - t) * 1000)
samples.sort()
print(json.dumps({{"one_publisher_per_s": rate, "lookup_ms": {{"p50": samples[len(samples)//2],
                  "p99": samples[int(0.99 * len(samples))]}}}}))
"""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["note"] = "200 users x 2 versions (its publish is the only way to write rows)"
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="write results here")
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--publishes", type=int, default=40, help="per publisher per window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--erasures", type=int, default=5)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--previous", type=Path, default=None, help="previous release checkout")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    results: dict = {"users": USERS, "versions_per_user": VERSIONS, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="adaptkit-registry-bench-") as scratch:
        work = Path(scratch)
        for database in args.databases.split(","):
            print(f"[registry bench] {database}", file=sys.stderr)
            root = work / database / "adapters"
            if database == "sqlite":
                results[database] = measure(f"sqlite:///{work / 'registry.db'}", root, args)
            else:
                with postgres_database() as url:
                    results[database] = measure(url, root, args)
        if args.previous is not None:
            print("[registry bench] previous release", file=sys.stderr)
            (work / "prev").mkdir()
            results["previous_release_sqlite"] = previous_release(
                args.previous, args, work / "prev"
            )
    floors = {}
    if "sqlite" in results:
        floors["sqlite_lookup_p50_le_1ms"] = results["sqlite"]["lookup_ms"]["p50"] <= 1.0
    if "postgresql" in results:
        pg = results["postgresql"]
        floors["postgresql_lookup_p50_le_2ms"] = pg["lookup_ms"]["p50"] <= 2.0
        floors["postgresql_4_publishers_ge_2x"] = pg["publish"]["four_over_one"] >= 2.0
        floors["postgresql_no_lost_update"] = pg["publish"]["lost"] == 0
    results["floors"] = floors
    results["wall_s"] = round(time.perf_counter() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["floors"], indent=2))


if __name__ == "__main__":
    main()

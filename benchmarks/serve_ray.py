"""adaptkit's server on Ray Serve: 2 replicas against 1, on the same machine, in one run.

    python benchmarks/serve_ray.py --json OUT.json [--model-cache DIR] [--users 32]
        [--clients 8] [--duration 30] [--max-tokens 24]

M users get all-linear rank-8 adapters with random weights (``benchmarks/bank.py``'s
``make_adapters``). For 1 and then 2 replicas of ``adaptkit.serve.ray_deployment``
(Ray's CPUs split between them; a replica's torch threads follow its CPUs), N clients
send greedy chat completions for random users through Ray's HTTP proxy for
``--duration`` seconds, each with the user as the multiplexed model id, after an
untimed round that places every user once. Reported per phase: output tokens/s,
p50/p99 latency, errors, and affinity: the fraction of requests that reached a
replica already holding their user (``x-adaptkit-resident``), and how the users
spread over the replicas.

On a 2-core CPU, 2 replicas share the same 2 cores: expect no more throughput than
one replica that batches everyone; what a second replica buys here is placement, not
speed. Loopback only; every phase is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
from bank import (
    BASE,
    PROMPTS,
    common_parser,
    make_adapters,
    progress,
    publish_users,
    scratch_home,
    user_names,
)
from serve import free_port, percentile


async def one(http: httpx.AsyncClient, url: str, user: str, prompt: str, tokens: int) -> dict:
    began = time.perf_counter()
    response = await http.post(
        f"{url}/v1/chat/completions",
        headers={"serve_multiplexed_model_id": user},
        json={
            "model": f"{BASE}:{user}",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens,
            "temperature": 0,
        },
    )
    record = {"user": user, "status": response.status_code}
    record["latency"] = time.perf_counter() - began
    if response.status_code == 200:
        record["tokens"] = response.json()["usage"]["completion_tokens"]
        record["replica"] = response.headers["x-adaptkit-replica"]
        record["resident"] = response.headers["x-adaptkit-resident"] == "1"
    return record


async def phase(url: str, users: list[str], args) -> dict:
    records: list[dict] = []
    async with httpx.AsyncClient(timeout=600) as http:
        # Untimed: the replicas finish starting, and every user is placed once.
        for user in users:
            placed = await one(http, url, user, PROMPTS[0], 1)
            if placed["status"] != 200:
                raise RuntimeError(f"warm-up request for {user} failed: {placed}")
        began = time.perf_counter()
        deadline = began + args.duration

        async def client(index: int) -> None:
            rng = random.Random(args.seed * 1000 + index)
            while time.perf_counter() < deadline:
                prompt = rng.choice(PROMPTS)
                records.append(await one(http, url, rng.choice(users), prompt, args.max_tokens))

        await asyncio.gather(*[client(i) for i in range(args.clients)])
        wall = time.perf_counter() - began
    ok = [r for r in records if r["status"] == 200]
    spread: dict[str, set[str]] = defaultdict(set)
    for record in ok:
        spread[record["replica"]].add(record["user"])
    tokens = sum(r["tokens"] for r in ok)
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "wall_seconds": round(wall, 2),
        "output_tokens_per_s": round(tokens / wall, 3),
        "latency_p50_s": percentile([r["latency"] for r in ok], 0.5),
        "latency_p99_s": percentile([r["latency"] for r in ok], 0.99),
        # Every user was placed before the clock: did each request find its replica?
        "resident_fraction": round(sum(r["resident"] for r in ok) / len(ok), 4) if ok else None,
        "users_per_replica": sorted(len(users) for users in spread.values()),
    }


def run_replicas(replicas: int, home: Path, users: list[str], args) -> dict:
    import ray
    from ray import serve

    from adaptkit.serve.ray_deployment import AdaptkitReplica

    port = free_port()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = AdaptkitReplica.options(
            num_replicas=replicas, ray_actor_options={"num_cpus": args.cpus / replicas}
        ).bind(str(home), BASE, args.max_batch)
        serve.run(deployment, route_prefix="/", blocking=False)
        return asyncio.run(phase(f"http://127.0.0.1:{port}", users, args))
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs Ray gets, split by replicas")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # Where files lie on this machine is not part of the result.
    local = {"json", "model_cache"}
    results: dict = {"config": {k: str(v) for k, v in vars(args).items() if k not in local}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home, registry = scratch_home(root, args.model_cache)
        from adaptkit.base_model import load_base

        progress(f"publishing {args.users} users' adapters")
        users = user_names(args.users)
        staged = make_adapters(load_base(BASE, home=home), root, args.users, 8, args.seed)
        publish_users(registry, dict(zip(users, staged, strict=True)))
        for replicas in (1, 2):
            progress(f"{replicas} replica(s), {args.clients} clients")
            results[f"replicas_{replicas}"] = run_replicas(replicas, home.root, users, args)
            progress(json.dumps(results[f"replicas_{replicas}"]))
    one, two = results["replicas_1"], results["replicas_2"]
    results["two_vs_one_throughput"] = round(
        two["output_tokens_per_s"] / one["output_tokens_per_s"], 3
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

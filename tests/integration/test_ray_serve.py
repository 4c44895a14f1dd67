"""adaptkit's server on Ray Serve with two local replicas (tiny model; slow: Ray starts a
local cluster): a user who comes back finds the replica that holds them, and every
answer equals a single engine's greedy answer for that user."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from bank_support import make_lora_dir, publish_dir
from serve_support import free_port

from adaptkit.bank import Engine
from adaptkit.base_model import load_base
from adaptkit.home import Home
from adaptkit.registry import Registry
from adaptkit.router import Request

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

pytestmark = pytest.mark.slow

USERS = [f"user{i}" for i in range(6)]
PROMPT = "How do I get to the library?"
TOKENS = 8
ROUNDS = 4


@pytest.fixture(scope="module")
def home(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Home:
    root = tmp_path_factory.mktemp("ray-serve")
    home = Home(root / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    model = load_base(str(tiny_model_dir), home=home).model
    for seed, user in enumerate(USERS, start=1):
        adapter = make_lora_dir(model, root / "src" / user, seed=seed, rank=4)
        publish_dir(registry, user, adapter, str(tiny_model_dir))
    return home


def single_engine_answers(home: Home, model_dir: Path) -> dict[str, str]:
    base = load_base(str(model_dir), home=home)
    registry = Registry(home.registry_url, home.adapters_dir)
    with Engine(base, registry, shared_dir=home.root / "shared") as engine:
        return {
            user: engine.generate([Request(PROMPT, user=user)], max_new_tokens=TOKENS)[0].text
            for user in USERS
        }


def test_users_stick_to_a_replica_and_answers_equal_one_engines(
    home: Home, tiny_model_dir: Path
) -> None:
    from adaptkit.serve.ray_deployment import REPLICA_HEADER, RESIDENT_HEADER, AdaptkitReplica

    expected = single_engine_answers(home, tiny_model_dir)
    assert len(set(expected.values())) > 1, "the users' adapters do not differ"
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = AdaptkitReplica.options(
            num_replicas=2, ray_actor_options={"num_cpus": 0.5}
        ).bind(str(home.root), str(tiny_model_dir))
        serve.run(deployment, route_prefix="/", blocking=False)
        replicas: dict[str, list[str]] = defaultdict(list)
        resident: dict[int, list[bool]] = defaultdict(list)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:

            def ask(user: str) -> httpx.Response:
                return client.post(
                    "/v1/chat/completions",
                    headers={"serve_multiplexed_model_id": user},
                    json={
                        "model": f"{tiny_model_dir}:{user}",
                        "messages": [{"role": "user", "content": PROMPT}],
                        "max_tokens": TOKENS,
                        "temperature": 0,
                    },
                )

            # Rounds 0 and 1 one by one (each user is placed, then comes back), then every
            # user at once: a replica's scheduler mixes its users in one batch.
            for round_ in range(ROUNDS):
                if round_ < 2:
                    responses = [ask(user) for user in USERS]
                else:
                    with ThreadPoolExecutor(len(USERS)) as pool:
                        responses = list(pool.map(ask, USERS))
                for user, response in zip(USERS, responses, strict=True):
                    assert response.status_code == 200, response.text
                    answer = response.json()["choices"][0]["message"]["content"]
                    assert answer == expected[user], (user, round_)
                    replicas[user].append(response.headers[REPLICA_HEADER])
                    if round_:
                        resident[round_].append(response.headers[RESIDENT_HEADER] == "1")
    finally:
        serve.shutdown()
        ray.shutdown()
    # Both replicas serve someone; a user who comes back alone finds their replica.
    assert len({r for seen in replicas.values() for r in seen}) == 2, dict(replicas)
    assert all(resident[1]), dict(replicas)
    assert all(seen[1] == seen[0] for seen in replicas.values()), dict(replicas)
    # All at once, Ray may send a request to the other replica when the one holding its
    # user is busy (multiplexing prefers, it does not pin): most still find theirs.
    concurrent = resident[2] + resident[3]
    assert sum(concurrent) / len(concurrent) >= 0.5, dict(replicas)

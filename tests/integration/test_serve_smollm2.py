"""``adaptkit serve`` on the packaged SmolLM2-135M: the ``openai`` client, isolation under
concurrency, an edit that becomes the version answering the next request, and kill -9
with feedback just acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from bank_support import make_lora_dir, publish_dir
from serve_support import free_port, serving, wait_ready

from adaptkit.gate import DEFAULT_PROBES, ProbeSuite
from adaptkit.kit import AdaptKit
from adaptkit.registry import Registry
from adaptkit.router import Request
from adaptkit.serve import ApiKeys, ServeConfig, Server

pytestmark = pytest.mark.integration

BASE = "smollm2-135m-instruct"
PROMPTS = [
    "How do I get to the museum?",
    "What should I cook tonight?",
    "Name a good book for a rainy day.",
    "How long does it take me to get to work?",
]
USERS = ["alice", "bob", "carol", "dave"]
TOKENS = 12


def publish_users(kit: AdaptKit, root: Path, users: list[str], b_std: float) -> None:
    for seed, user in enumerate(users, start=1):
        lora = make_lora_dir(kit.base.model, root / "src" / user, seed=seed, rank=8, b_std=b_std)
        publish_dir(kit.registry, user, lora, BASE)


def test_openai_client_and_isolation_under_concurrency(smollm2_home: Path, tmp_path: Path):
    kit = AdaptKit(smollm2_home, shared_dir=tmp_path / "shared")
    publish_users(kit, tmp_path, USERS, b_std=0.02)
    publish_users(kit, tmp_path / "v2", ["alice"], b_std=0.03)  # alice: v1 and v2
    # Each user once with their own prompt, and once with another's: 10 rows in flight.
    cases = [(u, PROMPTS[i % 4]) for i, u in enumerate([*USERS, None])]
    cases += [(u, PROMPTS[(i + 1) % 4]) for i, u in enumerate([*USERS, None])]
    alone = {
        case: kit.engine.generate([Request(case[1], user=case[0])], max_new_tokens=TOKENS)[0].text
        for case in set(cases)
    }
    expected = [alone[case] for case in cases]
    pinned = kit.engine.generate(
        [Request(PROMPTS[0], user="alice", version=1)], max_new_tokens=TOKENS
    )[0].text
    assert len(set(expected)) > len(PROMPTS)  # the users' adapters answer differently
    key, _ = ApiKeys(kit.registry).create("app")
    with kit, Server(kit, ServeConfig(workers=0)) as server, serving(server) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
        one = client.chat.completions.create(
            model=f"{BASE}:alice@1",
            messages=[{"role": "user", "content": PROMPTS[0]}],
            max_tokens=TOKENS,
            temperature=0,
        )
        assert one.model == f"{BASE}:alice@1" and one.choices[0].message.content == pinned
        streamed = client.chat.completions.create(
            model=f"{BASE}:alice",
            messages=[{"role": "user", "content": PROMPTS[0]}],
            max_tokens=TOKENS,
            temperature=0,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert text.strip() == expected[0]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model=f"{BASE}:mallory", messages=[{"role": "user", "content": "hi"}]
            )

        async def all_at_once() -> list[tuple[str, str]]:
            async with openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300
            ) as aclient:
                answers = await asyncio.gather(
                    *[
                        aclient.chat.completions.create(
                            model=f"{BASE}:{u}" if u else BASE,
                            messages=[{"role": "user", "content": p}],
                            max_tokens=TOKENS,
                            temperature=0,
                        )
                        for u, p in cases
                    ]
                )
            return [(a.model, a.choices[0].message.content) for a in answers]

        answers = asyncio.run(all_at_once())
    for (user, _), (model, text), want in zip(cases, answers, expected, strict=True):
        assert model == (f"{BASE}:{user}@{2 if user == 'alice' else 1}" if user else BASE)
        assert text == want, (user, model)


def wait_for(check, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(every)
    raise TimeoutError(f"not done within {timeout} s")


def test_an_edit_becomes_the_version_that_answers_the_next_request(smollm2_home: Path, tmp_path):
    kit = AdaptKit(smollm2_home, shared_dir=tmp_path / "shared")
    publish_users(kit, tmp_path, ["alice"], b_std=0.0)  # v1: the base model's answers
    config = ServeConfig(workers=1, no_auth=True, poll_seconds=0.2)
    probes = ProbeSuite(DEFAULT_PROBES[:4], max_new_tokens=10)  # a quick gate to prepare
    with kit, Server(kit, config, probes=probes) as server, serving(server) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=120)
        wait_for(lambda: server.learner.ready or None, 300)
        for prompt in ("How do I get to the office?", "How do I get to the library?"):
            answer = client.chat.completions.create(
                model=f"{BASE}:alice",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=TOKENS,
                temperature=0,
            )
            assert answer.model == f"{BASE}:alice@1"
            down = {"completion_id": answer.id, "key": "thumbs", "score": -1}
            edit = {
                "completion_id": answer.id,
                "key": "edit",
                "correction": "Take your bicycle: it is about 15 minutes by bike.",
            }
            for body in (down, edit):
                acked = httpx.post(f"{url}/v1/feedback", json=body)
                assert acked.status_code == 202, acked.text
            edited = acked.json()["id"]  # sft learns from the edit (the thumbs-down: skipped)
        posted = time.monotonic()

        def settled():
            state = httpx.get(f"{url}/v1/feedback/{edited}").json()
            return state if state["state"] != "pending" else None

        state = wait_for(settled, 300)
        # The first round's events may have made v2 already: the last edit is in v2 or v3.
        assert state["state"] == "trained" and state["version"] in (2, 3), state
        assert state["version_status"] in ("active", "candidate")
        after = client.chat.completions.create(
            model=f"{BASE}:alice",
            messages=[{"role": "user", "content": "How do I get to the zoo?"}],
            max_tokens=TOKENS,
            temperature=0,
        )
        seconds = time.monotonic() - posted
        if state["version_status"] == "active":
            assert after.model == f"{BASE}:alice@{state['version']}"
        else:  # the gate refused it: it stays a candidate with its reason; it does not serve
            assert state["version_reason"] and after.model != f"{BASE}:alice@{state['version']}"
        print(f"feedback to the next answer ({after.model}): {seconds:.1f} s")
        metrics = httpx.get(f"{url}/metrics").text.splitlines()
        counted = [m for m in metrics if m.startswith("adaptkit_feedback_to_version_seconds_count")]
        assert float(counted[0].split()[-1]) >= 1


def start_server(home: Path, port: int, log: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "adaptkit.cli.main", "serve", "--home", str(home),
        "--port", str(port), "--workers", "1", "--poll-seconds", "0.2", "--no-auth",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_kill_9_loses_no_acknowledged_feedback(smollm2_home: Path, tmp_path: Path) -> None:
    kit = AdaptKit(smollm2_home, shared_dir=tmp_path / "shared")
    publish_users(kit, tmp_path, ["alice"], b_std=0.0)
    kit.close()
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    process = start_server(smollm2_home, port, log)
    acknowledged: list[str] = []
    try:
        wait_ready(url, timeout=180)
        chat = {
            "model": f"{BASE}:alice",
            "messages": [{"role": "user", "content": "How do I get to the office?"}],
            "max_tokens": 12,
            "temperature": 0,
        }
        completion = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=120).json()
        # Feedback until the trainer is mid-update, then kill -9 right after an ack.
        for index in range(40):
            body = {
                "completion_id": completion["id"],
                "key": "edit",
                "correction": f"Take your bicycle, {index + 10} minutes.",
            }
            response = httpx.post(f"{url}/v1/feedback", json=body, timeout=60)
            assert response.status_code == 202
            acknowledged.append(response.json()["id"])
            if index >= 8 and httpx.get(f"{url}/readyz").json()["learner"] == "running":
                break
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    registry = Registry(f"sqlite:///{smollm2_home / 'registry.db'}", smollm2_home / "adapters")
    active = registry.active_version("alice")
    assert registry.blob_problem(active) is None  # the active version is intact

    process = start_server(smollm2_home, port, log)
    try:
        wait_ready(url, timeout=180)
        for event_id in acknowledged:
            state = httpx.get(f"{url}/v1/feedback/{event_id}", timeout=30)
            assert state.status_code == 200, (event_id, state.text)
            assert state.json()["state"] in ("pending", "trained", "held-out")
        answer = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=120).json()
        assert answer["model"].startswith(f"{BASE}:alice@")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()

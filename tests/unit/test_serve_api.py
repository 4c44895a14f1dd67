"""``adaptkit serve`` on the tiny model: the real ``openai`` client and httpx against uvicorn
on 127.0.0.1. Endpoints, naming, stored completions, feedback, keys, errors, batching."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from bank_support import make_lora_dir, publish_dir
from serve_support import serving

from adaptkit.bank import Repetition
from adaptkit.feedback import FeedbackLog
from adaptkit.kit import AdaptKit
from adaptkit.serve import ApiKeys, ServeConfig, Server

MESSAGES = [{"role": "user", "content": "How long does it take me to get to the library?"}]
CONTROL_TOKENS = 24
CONTROLS = {
    "plain": {},
    "hf": {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
    "openai": {"frequency_penalty": 1.5, "presence_penalty": 0.5},
}


class World:
    def __init__(self, root: Path, model_dir: Path) -> None:
        self.model = str(model_dir)
        self.root = root
        self.kit = AdaptKit(root / "home", base=self.model, shared_dir=root / "shared")
        for seed, user in enumerate(("alice", "bob", "team-carol"), start=1):
            lora = make_lora_dir(self.kit.base.model, root / "src" / user, seed=seed, rank=4)
            publish_dir(self.kit.registry, user, lora, self.model)
        # alice gets a second version: v1 stays pinnable.
        lora = make_lora_dir(self.kit.base.model, root / "src" / "alice2", seed=9, rank=4)
        publish_dir(self.kit.registry, "alice", lora, self.model)
        keys = ApiKeys(self.kit.registry)
        self.admin_key, _ = keys.create("admin")
        self.app_key, _ = keys.create("app", users="team-*")
        self.all_key, _ = keys.create("app")

    def alone(
        self, user: str | None, messages=MESSAGES, tokens: int = 8, version=None, repetition=None
    ) -> str:
        from adaptkit.router import Request

        request = Request(messages, user=user, version=version)
        results = self.kit.engine.generate([request], max_new_tokens=tokens, repetition=repetition)
        return results[0].text


@pytest.fixture(scope="module")
def world(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    built = World(tmp_path_factory.mktemp("serve-world"), tiny_model_dir)
    # Reference answers before the scheduler owns the engine.
    built.expected = {
        (user, version): built.alone(user, version=version)
        for user, version in [("alice", None), ("alice", 1), ("bob", None), (None, None)]
    }
    built.controlled = {
        name: (built.alone("bob", tokens=CONTROL_TOKENS, repetition=Repetition(**fields)), fields)
        for name, fields in CONTROLS.items()
    }
    config = ServeConfig(workers=0, max_batch=8, max_queue=64, max_body_bytes=4096)
    with built.kit, Server(built.kit, config) as server, serving(server) as url:
        built.url, built.server = url, server
        yield built


def client(world: World, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{world.url}/v1", api_key=key or world.all_key, max_retries=0, timeout=60
    )


def chat(world: World, model: str, key: str | None = None, **options):
    options.setdefault("max_tokens", 8)
    options.setdefault("temperature", 0)
    return client(world, key).chat.completions.create(model=model, messages=MESSAGES, **options)


def test_chat_answers_with_the_users_active_version_named_exactly(world: World) -> None:
    answer = chat(world, f"{world.model}:alice")
    assert answer.model == f"{world.model}:alice@2"
    assert answer.choices[0].message.content == world.expected[("alice", None)]
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 8 and answer.usage.prompt_tokens > 5
    assert answer.adaptkit["kind"] == "adapter"


def test_a_pinned_version_and_the_base_model(world: World) -> None:
    pinned = chat(world, f"{world.model}:alice@1")
    assert pinned.model == f"{world.model}:alice@1"
    assert pinned.choices[0].message.content == world.expected[("alice", 1)]
    base = chat(world, world.model)
    assert base.model == world.model
    assert base.choices[0].message.content == world.expected[(None, None)]
    assert len({pinned.choices[0].message.content, base.choices[0].message.content}) == 2


def test_streaming_sends_the_same_answer_in_chunks(world: World) -> None:
    chunks = list(
        chat(world, f"{world.model}:bob", stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].usage.completion_tokens == 8 and not chunks[-1].choices
    chunks = chunks[:-1]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == world.expected[("bob", None)]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.model for c in chunks} == {f"{world.model}:bob@1"}
    stored = httpx.get(
        f"{world.url}/v1/chat/completions/{chunks[0].id}",
        headers={"Authorization": f"Bearer {world.all_key}"},
    ).json()
    assert stored["response"] == text and stored["user"] == "bob"


def test_every_completion_is_stored_under_its_id(world: World) -> None:
    answer = chat(world, f"{world.model}:alice@1")
    stored = httpx.get(
        f"{world.url}/v1/chat/completions/{answer.id}",
        headers={"Authorization": f"Bearer {world.all_key}"},
    ).json()
    assert stored["messages"] == MESSAGES
    assert stored["response"] == answer.choices[0].message.content
    assert stored["model"] == f"{world.model}:alice@1"
    with world.kit.registry.session() as session:
        from adaptkit.registry import RequestRow

        row = session.query(RequestRow).order_by(RequestRow.id.desc()).first()
        assert row.version_number == 1 and row.user_id == "alice"


def test_text_completions_and_models(world: World) -> None:
    answer = client(world).completions.create(
        model=f"{world.model}:alice", prompt=MESSAGES[0]["content"], max_tokens=8, temperature=0
    )
    assert answer.choices[0].text == world.expected[("alice", None)]
    assert answer.model == f"{world.model}:alice@2"
    ids = [m.id for m in client(world).models.list()]
    assert ids[0] == world.model and f"{world.model}:alice" in ids
    scoped = [m.id for m in client(world, world.app_key).models.list()]
    assert scoped == [world.model, f"{world.model}:team-carol"]


def test_errors_are_the_clients_own_exceptions(world: World) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        chat(world, f"{world.model}:nobody")
    assert "unknown user 'nobody'" in unknown.value.message
    assert unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError, match="no version 7"):
        chat(world, f"{world.model}:alice@7")
    with pytest.raises(openai.NotFoundError, match="this server serves"):
        chat(world, "gpt-4o")
    with pytest.raises(openai.BadRequestError, match="positive number"):
        chat(world, f"{world.model}:alice@x")
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        chat(world, f"{world.model}:alice", temperature=7)
    with pytest.raises(openai.BadRequestError, match="context of 512 tokens"):
        client(world).chat.completions.create(
            model=world.model,
            messages=[{"role": "user", "content": "airport " * 300}],
            max_tokens=300,
        )
    with pytest.raises(openai.AuthenticationError, match="unknown or revoked"):
        chat(world, world.model, key="ak-not-a-key")
    with pytest.raises(openai.PermissionDeniedError, match="team-\\*"):
        chat(world, f"{world.model}:alice", key=world.app_key)
    assert chat(world, f"{world.model}:team-carol", key=world.app_key).model.endswith("@1")


def test_malformed_and_oversized_bodies_are_4xx(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.all_key}", "Content-Type": "application/json"}
    url = f"{world.url}/v1/chat/completions"
    broken = httpx.post(url, content=b'{"model": ', headers=headers)
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
    big = httpx.post(url, content=b"{" + b" " * 5000 + b"}", headers=headers)
    assert big.status_code == 413 and "--max-body-bytes" in big.json()["error"]["message"]
    missing = httpx.post(url, json={"model": world.model}, headers=headers)
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "messages"
    nobody = httpx.post(url, json={"model": world.model, "messages": MESSAGES})
    assert nobody.status_code == 401 and "Bearer" in nobody.json()["error"]["message"]


def test_admin_endpoints_need_an_admin_key(world: World) -> None:
    url = f"{world.url}/v1/admin/users"
    refused = httpx.get(url, headers={"Authorization": f"Bearer {world.all_key}"})
    assert refused.status_code == 403
    admin = {"Authorization": f"Bearer {world.admin_key}"}
    users = {u["id"]: u for u in httpx.get(url, headers=admin).json()}
    assert users["alice"]["active_version"] == 2 and users["alice"]["versions"] == 2
    versions = httpx.get(f"{url}/alice/versions", headers=admin).json()
    assert [v["status"] for v in versions] == ["retired", "active"]
    rolled = httpx.post(f"{url}/bob/activate", json={"version": 1}, headers=admin)
    assert rolled.status_code == 200 and rolled.json()["status"] == "active"
    assert httpx.get(f"{world.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{world.url}/readyz").json()
    assert ready["model"] == "loaded" and ready["registry"] == "reachable"
    metrics = httpx.get(f"{world.url}/metrics").text
    assert "adaptkit_time_to_first_token_seconds_count" in metrics
    assert "adaptkit_adapter_cache_hits" in metrics


def test_an_admin_erases_a_user_and_nothing_of_theirs_is_served_after(world: World) -> None:
    publish_dir(world.kit.registry, "erin", world.root / "src" / "bob", world.model)
    answer = chat(world, f"{world.model}:erin")
    url = f"{world.url}/v1/admin/users/erin"
    refused = httpx.delete(url, headers={"Authorization": f"Bearer {world.all_key}"})
    assert refused.status_code == 403
    erased = httpx.delete(url, headers={"Authorization": f"Bearer {world.admin_key}"})
    assert erased.status_code == 200, erased.text
    report = erased.json()
    assert (report["versions"], report["requests"]) == (1, 1)
    assert report["actor"].startswith("api-key:") and world.admin_key not in report["actor"]
    with pytest.raises(openai.NotFoundError):
        chat(world, f"{world.model}:erin")
    stored = httpx.get(
        f"{world.url}/v1/chat/completions/{answer.id}",
        headers={"Authorization": f"Bearer {world.admin_key}"},
    )
    assert stored.status_code == 404
    assert "erin" not in {u.id for u in world.kit.registry.users()}


def test_feedback_is_acknowledged_once_and_its_state_is_readable(world: World) -> None:
    answer = chat(world, f"{world.model}:bob")
    headers = {"Authorization": f"Bearer {world.all_key}"}
    body = {"completion_id": answer.id, "key": "edit", "correction": "Cycle: 15 minutes."}
    first = httpx.post(
        f"{world.url}/v1/feedback", json=body, headers={**headers, "Idempotency-Key": "r-1"}
    )
    again = httpx.post(
        f"{world.url}/v1/feedback", json=body, headers={**headers, "Idempotency-Key": "r-1"}
    )
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and first.json()["state"] == "pending"
    read = httpx.get(f"{world.url}/v1/feedback/{first.json()['id']}", headers=headers).json()
    assert read["kind"] == "edit" and read["completion_id"] == answer.id
    for odd in ("fb-x", "fb-%C2%B2", "12345678901234567890"):  # "²" is a digit to str.isdigit
        assert httpx.get(f"{world.url}/v1/feedback/{odd}", headers=headers).status_code == 404
    events = world.kit.registry  # one event stored, not two
    assert len([e for e in FeedbackLog(events).events("bob") if e.kind == "edit"]) == 1

    other = chat(world, f"{world.model}:bob", temperature=1.0, seed=3)
    pair = {
        "key": "preference",
        "completion_id": answer.id,
        "preferred": {"completion_id": other.id},
        "non_preferred": {"text": "Take the car."},
    }
    assert httpx.post(f"{world.url}/v1/feedback", json=pair, headers=headers).status_code == 202
    thumbs = {"key": "thumbs", "completion_id": answer.id}
    missing = httpx.post(f"{world.url}/v1/feedback", json=thumbs, headers=headers)
    assert (
        missing.status_code == 422 and "'score' is required" in missing.json()["error"]["message"]
    )
    gone = httpx.post(
        f"{world.url}/v1/feedback",
        json={"key": "accept", "completion_id": "chatcmpl-x"},
        headers=headers,
    )
    assert gone.status_code == 404
    foreign = httpx.post(
        f"{world.url}/v1/feedback",
        json={"key": "accept", "completion_id": answer.id},
        headers={"Authorization": f"Bearer {world.app_key}"},
    )
    assert foreign.status_code == 403


def test_a_reader_can_wait_for_an_event_to_leave_pending(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.all_key}"}
    answer = chat(world, f"{world.model}:bob")
    body = {"completion_id": answer.id, "key": "accept"}
    posted = httpx.post(f"{world.url}/v1/feedback", json=body, headers=headers).json()
    url = f"{world.url}/v1/feedback/{posted['id']}"
    began = time.monotonic()
    still = httpx.get(url, params={"wait": 0.6}, headers=headers, timeout=30).json()
    assert still["state"] == "pending" and time.monotonic() - began >= 0.6
    number = int(posted["id"].removeprefix("fb-"))

    def learn() -> None:  # what the trainer does when it skips the event, then its signal
        time.sleep(0.3)
        FeedbackLog(world.kit.registry).settle({number: "no-signal"}, rejected=False)
        world.server.updates.notify()

    threading.Thread(target=learn).start()
    began = time.monotonic()
    settled = httpx.get(url, params={"wait": 50}, headers=headers, timeout=90).json()
    assert settled["state"] == "skipped" and time.monotonic() - began < 50
    too_long = httpx.get(url, params={"wait": 61}, headers=headers)
    assert too_long.status_code == 422 and "wait" in too_long.json()["error"]["message"]


def test_concurrent_users_share_batches_and_keep_their_own_answers(world: World) -> None:
    models = [f"{world.model}:alice", world.model, f"{world.model}:bob", f"{world.model}:alice@1"]
    expected = [
        world.expected[("alice", None)],
        world.expected[(None, None)],
        world.expected[("bob", None)],
        world.expected[("alice", 1)],
    ]

    async def many() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{world.url}/v1", api_key=world.all_key, max_retries=0
        ) as aclient:
            answers = await asyncio.gather(
                *[
                    aclient.chat.completions.create(
                        model=models[i % 4], messages=MESSAGES, max_tokens=8, temperature=0
                    )
                    for i in range(24)
                ]
            )
        return [a.choices[0].message.content for a in answers]

    answers = asyncio.run(many())
    assert answers == [expected[i % 4] for i in range(24)]
    metrics = httpx.get(f"{world.url}/metrics").text
    largest = max(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("adaptkit_batch_rows_bucket") and 'le="1.0"' not in line
    )
    assert largest > 0  # some steps decoded more than one row


def test_a_full_queue_is_429_with_retry_after(world: World, tiny_model_dir: Path, tmp_path):
    kit = AdaptKit(tmp_path / "home", base=str(tiny_model_dir))
    config = ServeConfig(workers=0, max_batch=1, max_queue=1, no_auth=True)
    with kit, Server(kit, config) as server, serving(server) as url:
        statuses: list[int] = []
        headers: list[str | None] = []

        def one() -> None:
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": str(tiny_model_dir), "messages": MESSAGES, "max_tokens": 200},
                timeout=120,
            )
            statuses.append(response.status_code)
            headers.append(response.headers.get("retry-after"))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses.count(200) >= 2 and 429 in statuses
    assert all(h and int(h) >= 1 for s, h in zip(statuses, headers, strict=True) if s == 429)


def test_no_auth_is_refused_off_loopback() -> None:
    from adaptkit.errors import InputError

    with pytest.raises(InputError, match="loopback only"):
        ServeConfig(host="0.0.0.0", no_auth=True)
    with pytest.raises(InputError, match="--max-batch must be >= 1.*--workers"):
        ServeConfig(max_batch=0, workers=3)


def test_a_client_that_disconnects_leaves_the_batch(world: World) -> None:
    def cancelled() -> float:
        for line in httpx.get(f"{world.url}/metrics").text.splitlines():
            if line.startswith('adaptkit_requests_total{outcome="cancelled"}'):
                return float(line.split()[-1])
        return 0.0

    before = cancelled()
    body = {"model": world.model, "messages": MESSAGES, "max_tokens": 470, "stream": True}
    headers = {"Authorization": f"Bearer {world.all_key}"}
    with httpx.stream(
        "POST", f"{world.url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # the row is decoding: leave now
    deadline = time.monotonic() + 10
    while cancelled() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1
    assert "adaptkit_batch_size 0.0" in httpx.get(f"{world.url}/metrics").text


def test_repetition_control_fields_answer_as_the_engine_does_alone(world: World) -> None:
    """OpenAI's frequency_penalty / presence_penalty, and repetition_penalty /
    no_repeat_ngram_size as extra body fields (vLLM's way), each request with its own."""
    plain = world.controlled["plain"][0]

    def ask(fields: dict, **options):
        # The openai client's own arguments; the others go in the body as they are.
        own = ("frequency_penalty", "presence_penalty")
        openai_fields = {k: v for k, v in fields.items() if k in own}
        extra = {k: v for k, v in fields.items() if k not in own}
        return chat(
            world,
            f"{world.model}:bob",
            max_tokens=CONTROL_TOKENS,
            extra_body=extra or None,
            **openai_fields,
            **options,
        )

    for name in ("hf", "openai"):
        expected, fields = world.controlled[name]
        assert expected != plain, name  # the control changes this answer
        assert ask(fields).choices[0].message.content == expected, name
        chunks = ask(fields, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected


def test_bad_repetition_control_fields_are_422_naming_the_field(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.all_key}"}
    url = f"{world.url}/v1/chat/completions"
    body = {"model": world.model, "messages": MESSAGES, "max_tokens": 4}
    for field, value in (
        ("repetition_penalty", 0),
        ("no_repeat_ngram_size", -1),
        ("frequency_penalty", 2.5),
        ("presence_penalty", -3),
    ):
        refused = httpx.post(url, json={**body, field: value}, headers=headers)
        error = refused.json()["error"]
        assert refused.status_code == 422 and error["param"] == field, (field, error)
        assert field in error["message"]
    with pytest.raises(openai.UnprocessableEntityError, match="frequency_penalty"):
        chat(world, world.model, frequency_penalty=2.5)

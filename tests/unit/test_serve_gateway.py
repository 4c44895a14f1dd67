"""Gateway mode on the tiny model: one ``adaptkit serve --upstream URL`` in front of
another ``adaptkit serve`` (it speaks the same API). The gateway plans each request over
the registry and forwards it under the version's immutable name; answers, streaming, the
stored completion and a version change mid-run are checked through the real ``openai``
client, against what the upstream answers when asked directly."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from bank_support import make_lora_dir, publish_dir
from serve_support import free_port, serving

from adaptkit.kit import AdaptKit
from adaptkit.router import Plan, PlannedAdapter
from adaptkit.serve import ServeConfig, Server
from adaptkit.serve.upstream import Upstream

MESSAGES = [{"role": "user", "content": "How long does it take me to get to the library?"}]


def ask(url: str, model: str, **options):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    options.setdefault("max_tokens", 8)
    options.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=MESSAGES, **options)


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gateway")
    model = str(tiny_model_dir)
    engine_kit = AdaptKit(root / "home", base=model, shared_dir=root / "shared")
    for seed, user in enumerate(("alice", "bob"), start=1):
        lora = make_lora_dir(engine_kit.base.model, root / "src" / user, seed=seed, rank=4)
        publish_dir(engine_kit.registry, user, lora, model)
    # alice's next version, published mid-run by a test (made before the engine wraps the
    # base's layers).
    make_lora_dir(engine_kit.base.model, root / "src" / "alice-v2", seed=33, rank=4)
    upstream_config = ServeConfig(workers=0, no_auth=True, max_batch=8)
    # The gateway's own kit: the same home (registry), no engine of its own.
    gateway_kit = AdaptKit(root / "home", base=model, shared_dir=root / "shared")
    with (
        engine_kit,
        Server(engine_kit, upstream_config) as upstream,
        serving(upstream) as upstream_url,
    ):
        config = ServeConfig(workers=0, no_auth=True, upstream=upstream_url)
        with gateway_kit, Server(gateway_kit, config) as gateway, serving(gateway) as url:
            yield {
                "model": model,
                "root": root,
                "gateway": url,
                "upstream": upstream_url,
                "kit": gateway_kit,
                "engine_kit": engine_kit,
            }


def test_answers_are_the_upstreams_for_the_users_version(setup) -> None:
    model = setup["model"]
    for user in ("alice", "bob"):
        through = ask(setup["gateway"], f"{model}:{user}")
        direct = ask(setup["upstream"], f"{model}:{user}@1")
        assert through.model == f"{model}:{user}@1"
        assert through.choices[0].message.content == direct.choices[0].message.content
        assert through.usage.completion_tokens == direct.usage.completion_tokens
        assert through.usage.prompt_tokens == direct.usage.prompt_tokens
    base = ask(setup["gateway"], model)
    assert base.model == model
    assert (
        base.choices[0].message.content == ask(setup["upstream"], model).choices[0].message.content
    )
    # The gateway never loaded a model to answer.
    assert setup["kit"]._engine is None


def test_streaming_through_the_gateway(setup) -> None:
    model = setup["model"]
    whole = ask(setup["gateway"], f"{model}:bob").choices[0].message.content
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in ask(setup["gateway"], f"{model}:bob", stream=True)
        if chunk.choices
    ]
    assert len(pieces) > 2 and "".join(pieces) == whole


def test_a_new_version_is_forwarded_from_the_next_request(setup) -> None:
    model, kit = setup["model"], setup["engine_kit"]
    before = ask(setup["gateway"], f"{model}:alice")
    publish_dir(kit.registry, "alice", setup["root"] / "src" / "alice-v2", model)
    after = ask(setup["gateway"], f"{model}:alice")
    assert (before.model, after.model) == (f"{model}:alice@1", f"{model}:alice@2")
    direct = ask(setup["upstream"], f"{model}:alice@2").choices[0].message.content
    assert after.choices[0].message.content == direct
    assert direct != before.choices[0].message.content
    # The gateway stored what it answered, under the id it returned.
    stored = httpx.get(f"{setup['gateway']}/v1/chat/completions/{after.id}").json()
    assert stored["model"] == f"{model}:alice@2"
    assert stored["response"] == direct and stored["user"] == "alice"


def test_unknown_users_and_a_dead_upstream_are_the_clients_typed_errors(setup) -> None:
    with pytest.raises(openai.NotFoundError, match="zed"):
        ask(setup["gateway"], f"{setup['model']}:zed")
    dead = ServeConfig(workers=0, no_auth=True, upstream=f"http://127.0.0.1:{free_port()}")
    with (
        Server(setup["kit"], dead) as gateway,
        serving(gateway) as url,
        pytest.raises(openai.APIStatusError) as caught,
    ):
        ask(url, f"{setup['model']}:alice")
    assert caught.value.status_code == 502
    assert "upstream" in caught.value.message


def test_names_follow_the_upstreams_convention() -> None:
    plan = Plan("adapter", "alice", (PlannedAdapter("user", "alice", version=7),), "active")
    assert Upstream("http://x", "vllm", "org/base").model_name(plan) == "alice@v7"
    assert Upstream("http://x", "adaptkit", "base").model_name(plan) == "base:alice@7"
    bare = Plan("base", None, (), "no user")
    assert Upstream("http://x", "vllm", "org/base").model_name(bare) == "org/base"


def test_upstream_flags_are_checked() -> None:
    with pytest.raises(Exception, match="--upstream must be an http"):
        ServeConfig(upstream="10.0.0.5:8000")
    with pytest.raises(Exception, match="--upstream-kind"):
        ServeConfig(upstream="http://x", upstream_kind="tgi")

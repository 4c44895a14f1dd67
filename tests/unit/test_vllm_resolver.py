"""The vLLM LoRA resolver plugin, loaded the way vLLM loads it.

vLLM is installed without its dependencies (no CUDA torch here): what runs is vLLM's
own ``LoRAResolver`` / ``LoRARequest`` classes and its plugin loader
(``vllm.plugins.load_general_plugins``, which reads our ``vllm.general_plugins``
entry point). Each check runs in a fresh process, as vLLM would: importing vLLM
adjusts process-wide settings that the rest of the test session should not inherit.
What the resolver materializes is then loaded by PEFT, whose logits must equal
adaptkit's engine on the same version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, publish_dir
from peft import PeftModel

from adaptkit.bank import Engine
from adaptkit.base_model import load_base
from adaptkit.home import Home
from adaptkit.registry import Registry

SERVED = "org/tiny-base"
PROMPT_IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])

# Runs in a child process: load the plugins as vLLM's engine start does, then ask
# the registered resolver for each (base, name) pair on the command line.
RESOLVE = """
import asyncio, json, sys
from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry
from vllm.plugins import load_general_plugins

load_general_plugins()
resolver = LoRAResolverRegistry.get_resolver("adaptkit")
assert isinstance(resolver, LoRAResolver)
results = []
for base, name in json.loads(sys.argv[1]):
    request = asyncio.run(resolver.resolve_lora(base, name))
    assert request is None or isinstance(request, LoRARequest)
    results.append(None if request is None else {
        "lora_name": request.lora_name,
        "lora_int_id": request.lora_int_id,
        "lora_path": request.lora_path,
    })
print(json.dumps({"resolver": type(resolver).__name__, "results": results}))
"""


@pytest.fixture(scope="module")
def home(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Home:
    root = tmp_path_factory.mktemp("vllm-resolver")
    home = Home(root / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    model = load_base(str(tiny_model_dir), home=home).model
    for seed, user in enumerate(("alice", "bob"), start=1):
        adapter = make_lora_dir(model, root / "src" / user, seed=seed, rank=4)
        publish_dir(registry, user, adapter, str(tiny_model_dir))
    return home


def resolve(
    home: Home, model_dir: Path, pairs: list[tuple[str, str]], cache: Path | None = None
) -> subprocess.Popen:
    env = os.environ | {
        "VLLM_PLUGINS": "adaptkit",  # only ours: vLLM's own resolvers need their settings
        "ADAPTKIT_HOME": str(home.root),
        "ADAPTKIT_BASE": str(model_dir),
        "ADAPTKIT_VLLM_SERVED_BASE": SERVED,
    }
    if cache is not None:
        env["ADAPTKIT_VLLM_CACHE"] = str(cache)
    return subprocess.Popen(
        [sys.executable, "-c", RESOLVE, json.dumps(pairs)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def results(process: subprocess.Popen) -> list[dict | None]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["resolver"] == "AdaptkitResolver"
    return answer["results"]


@torch.inference_mode()
def engine_logits(home: Home, model_dir: Path, user: str, number: int) -> torch.Tensor:
    base = load_base(str(model_dir), home=home)
    registry = Registry(home.registry_url, home.adapters_dir)
    with Engine(base, registry, shared_dir=home.root / "shared") as engine:
        engine.set_rows([[(engine.bank.load_user(registry.version(user, number)), 1.0)]])
        return base.model(PROMPT_IDS).logits


@torch.inference_mode()
def peft_logits(home: Home, model_dir: Path, adapter_dir: str) -> torch.Tensor:
    model = PeftModel.from_pretrained(load_base(str(model_dir), home=home).model, adapter_dir)
    return model(PROMPT_IDS).logits


def test_resolves_versioned_names_only_for_its_base(home: Home, tiny_model_dir: Path) -> None:
    pairs = [
        (SERVED, "alice@v1"),
        (SERVED, "bob@v1"),
        (SERVED, "alice"),  # bare user name: a moving target, never resolved
        ("another/base", "alice@v1"),
        (SERVED, "zed@v1"),  # unknown user
        (SERVED, "alice@v9"),  # unknown version
        (SERVED, "../alice@v1"),  # not a user id
    ]
    alice, bob, bare, other_base, unknown, no_version, bad = results(
        resolve(home, tiny_model_dir, pairs)
    )
    assert bare is None and other_base is None and unknown is None
    assert no_version is None and bad is None
    assert alice["lora_name"] == "alice@v1" and bob["lora_name"] == "bob@v1"
    assert alice["lora_int_id"] != bob["lora_int_id"] and alice["lora_int_id"] >= 1
    for answer, user in ((alice, "alice"), (bob, "bob")):
        config = json.loads((Path(answer["lora_path"]) / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == SERVED
        torch.testing.assert_close(
            peft_logits(home, tiny_model_dir, answer["lora_path"]),
            engine_logits(home, tiny_model_dir, user, 1),
            rtol=1e-5,
            atol=1e-5,
        )


def test_a_new_version_arrives_under_a_new_name(home: Home, tiny_model_dir: Path, tmp_path) -> None:
    registry = Registry(home.registry_url, home.adapters_dir)
    model = load_base(str(tiny_model_dir), home=home).model
    adapter = make_lora_dir(model, tmp_path / "alice-v2", seed=21, rank=2)
    publish_dir(registry, "alice", adapter, str(tiny_model_dir))
    old, new = results(resolve(home, tiny_model_dir, [(SERVED, "alice@v1"), (SERVED, "alice@v2")]))
    assert old["lora_path"] != new["lora_path"] and old["lora_int_id"] != new["lora_int_id"]
    torch.testing.assert_close(
        peft_logits(home, tiny_model_dir, new["lora_path"]),
        engine_logits(home, tiny_model_dir, "alice", 2),
        rtol=1e-5,
        atol=1e-5,
    )


def test_two_engines_resolving_at_once_share_one_whole_directory(
    home: Home, tiny_model_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"  # empty: both processes have to materialize it
    pairs = [(SERVED, "bob@v1")] * 3
    first, second = (resolve(home, tiny_model_dir, pairs, cache) for _ in range(2))
    answers = results(first) + results(second)
    paths = {answer["lora_path"] for answer in answers}
    assert len(paths) == 1 and Path(next(iter(paths))).parent == cache
    # No scratch directory of either process is left behind.
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []
    torch.testing.assert_close(
        peft_logits(home, tiny_model_dir, next(iter(paths))),
        engine_logits(home, tiny_model_dir, "bob", 1),
        rtol=1e-5,
        atol=1e-5,
    )


def test_the_plugin_says_what_to_set_when_it_is_not_configured(
    home: Home, tiny_model_dir: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ADAPTKIT_VLLM_SERVED_BASE"}
    env |= {"VLLM_PLUGINS": "adaptkit", "ADAPTKIT_HOME": str(home.root)}
    process = subprocess.run(
        [sys.executable, "-c", RESOLVE, "[]"], env=env, capture_output=True, text=True, timeout=300
    )
    assert process.returncode != 0
    assert "ADAPTKIT_VLLM_SERVED_BASE" in process.stderr

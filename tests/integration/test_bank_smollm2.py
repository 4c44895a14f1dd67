"""Mixed-user batches on the real SmolLM2-135M: parity with PEFT per row, isolation, nf4, merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, peft_reference, publish_dir

from adaptkit.bank import Engine, Repetition
from adaptkit.base_model import load_base
from adaptkit.home import Home
from adaptkit.registry import Registry
from adaptkit.router import Request, RoutingPolicy

pytestmark = pytest.mark.integration

BASE = "smollm2-135m-instruct"
PROMPTS = [
    "How long does it take me to get to the train station?",
    "What should I cook for dinner tonight?",
    "Name a good weekend activity.",
]
TOKENS = 8
NF4_TOKENS = 5  # nf4 on CPU dequantizes every layer per step: slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, smollm2_cache: Path):
    root = tmp_path_factory.mktemp("bank-smollm2")
    (root / "home" / "models").mkdir(parents=True)
    (root / "home" / "models" / BASE).symlink_to(smollm2_cache, target_is_directory=True)
    home = Home(root / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    base = load_base(BASE, home=home)
    adapters = {
        "alice": make_lora_dir(base.model, root / "alice", seed=1, rank=8, b_std=0.2),
        "bob": make_lora_dir(
            base.model, root / "bob", seed=2, rank=4, targets=["q_proj", "v_proj", "down_proj"],
            b_std=0.3,
        ),
    }  # fmt: skip
    for user, path in adapters.items():
        publish_dir(registry, user, path, BASE)
    return home, registry, adapters


@torch.inference_mode()
def test_mixed_batch_matches_peft_and_users_stay_isolated(world) -> None:
    home, registry, adapters = world
    requests = [
        Request(PROMPTS[0], user="alice"),
        Request(PROMPTS[1], user="alice"),
        Request(PROMPTS[0], user=None),
        Request(PROMPTS[0], user="bob"),
    ]
    with Engine(load_base(BASE, home=home), registry, shared_dir=home.root / "shared") as engine:
        results = engine.generate(requests, max_new_tokens=TOKENS)
    reference = load_base(BASE, home=home)
    for request, result in zip(requests, results, strict=True):
        adapter = adapters[request.user] if request.user else None
        expected = peft_reference(
            reference.model, reference.tokenizer, adapter, request.prompt, TOKENS
        )
        assert result.tokens == expected, request
    # Same prompt, three answers: a row served with another user's adapter would be caught.
    assert len({tuple(results[i].tokens) for i in (0, 2, 3)}) == 3


@torch.inference_mode()
def test_nf4_base_mixed_batch_matches_peft_and_is_not_merged(world) -> None:
    home, registry, adapters = world
    policy = RoutingPolicy(merge_min_new_tokens=1)
    requests = [Request(PROMPTS[1], user="alice"), Request(PROMPTS[1], user="bob")]
    with Engine(load_base(BASE, home=home, quant="nf4"), registry, policy=policy,
                shared_dir=home.root / "shared") as engine:  # fmt: skip
        results = engine.generate(requests, max_new_tokens=NF4_TOKENS)
        single = engine.router.plan_batch(requests[:1], max_new_tokens=NF4_TOKENS)[0]
    assert single.kind == "adapter"
    assert "not merged" in single.reason and "nf4" in single.reason
    for request, result in zip(requests, results, strict=True):
        # A fresh base per reference: PEFT's unload() does not restore an nf4 base
        # (measured: logits move by ~40 after load_adapter + unload), so reusing one
        # reference model would corrupt the next row's expected answer.
        reference = load_base(BASE, home=home, quant="nf4")
        expected = peft_reference(
            reference.model, reference.tokenizer, adapters[request.user], request.prompt,
            NF4_TOKENS,
        )  # fmt: skip
        assert result.tokens == expected, request.user


@torch.inference_mode()
def test_merged_stream_matches_and_restores_weights_bitwise(world) -> None:
    home, registry, adapters = world
    policy = RoutingPolicy(merge_min_new_tokens=TOKENS)
    with Engine(load_base(BASE, home=home), registry, policy=policy,
                shared_dir=home.root / "shared") as engine:  # fmt: skip
        before = {n: w.base.weight.clone() for n, w in engine.wrappers.items()}
        merged = engine.generate([Request(PROMPTS[2], user="alice")], max_new_tokens=TOKENS)[0]
        assert merged.plan.kind == "merged"
        assert all(torch.equal(w.base.weight, before[n]) for n, w in engine.wrappers.items())
    reference = load_base(BASE, home=home)
    expected = peft_reference(
        reference.model, reference.tokenizer, adapters["alice"], PROMPTS[2], TOKENS
    )
    assert merged.tokens == expected


CONTROL_TOKENS = 40  # long enough for SmolLM2's greedy answers to repeat themselves


@torch.inference_mode()
def test_repetition_control_matches_transformers_generate_in_a_mixed_batch(world) -> None:
    """Base and PEFT LoRA rows, each with its own control, in one batch (and the merged
    path): each row's tokens are transformers' generate(do_sample=False, ...) alone."""
    home, registry, adapters = world
    rows = [
        (None, PROMPTS[1], {"repetition_penalty": 1.3}),
        ("alice", PROMPTS[1], {"no_repeat_ngram_size": 3}),
        ("bob", PROMPTS[0], {"repetition_penalty": 1.2, "no_repeat_ngram_size": 2}),
        (None, PROMPTS[2], {}),
    ]
    requests = [Request(prompt, user=user) for user, prompt, _ in rows]
    controls = [Repetition(**options) for _, _, options in rows]
    policy = RoutingPolicy(merge_min_new_tokens=1)
    with Engine(load_base(BASE, home=home), registry, policy=policy,
                shared_dir=home.root / "shared") as engine:  # fmt: skip
        results = engine.generate(requests, max_new_tokens=CONTROL_TOKENS, repetition=controls)
        merged = engine.generate(
            requests[1:2], max_new_tokens=CONTROL_TOKENS, repetition=controls[1]
        )[0]
    assert merged.plan.kind == "merged" and results[1].plan.kind == "adapter"
    reference = load_base(BASE, home=home)
    changed = 0
    for (user, prompt, options), result in zip(rows, results, strict=True):
        adapter = adapters[user] if user else None
        expected = peft_reference(
            reference.model, reference.tokenizer, adapter, prompt, CONTROL_TOKENS, **options
        )
        assert result.tokens == expected, (user, options)
        plain = peft_reference(
            reference.model, reference.tokenizer, adapter, prompt, CONTROL_TOKENS
        )
        changed += expected != plain
    assert merged.tokens == results[1].tokens
    assert changed >= 2  # the controls change real answers: the parity means something

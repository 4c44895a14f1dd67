"""Calibrated decoding: the choice rule on hand-made logits, and the engine against a
naive reference (unpadded, one row at a time, no KV cache) over PEFT adapters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, publish_dir

from adaptkit.bank import Calibration, Engine, calibrated_choice
from adaptkit.base_model import load_base
from adaptkit.errors import InputError
from adaptkit.home import Home
from adaptkit.prompting import as_messages, encode_prompt, stop_token_ids
from adaptkit.registry import Registry
from adaptkit.router import Request

PROMPTS = ["How long does it take me to get to the library?", "Write to my sister.", "hi"]
TOKENS = 10


def _logits(*probabilities: float) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probabilities])


def test_choice_prefers_what_the_request_adds_over_the_prior() -> None:
    # Token 0 is likelier for the request (0.5 vs 0.4), but the prior alone gives it 0.9:
    # the request adds nothing to it. Token 1 is the request's own contribution.
    # Token 2 is what the prior rules out most, but the request finds it implausible.
    request = _logits(0.5, 0.4, 0.04, 0.06)
    prior = _logits(0.9, 0.05, 0.0001, 0.0499)
    choice = calibrated_choice(
        torch.stack([request, request]),
        torch.stack([prior, prior]),
        Calibration(strength=1.0, plausibility=0.1),
    )
    assert choice.tolist() == [1, 1]


def test_a_token_the_request_rules_out_is_never_chosen() -> None:
    # A stop token masked before min_new_tokens: -inf for the request and its twin alike.
    request = _logits(0.6, 0.4)
    request[1] = float("-inf")
    prior = request.clone()
    choice = calibrated_choice(request[None], prior[None], Calibration(strength=1.0))
    assert choice.tolist() == [0]


def test_choice_without_strength_is_greedy() -> None:
    choice = calibrated_choice(
        _logits(0.5, 0.4, 0.1)[None], _logits(0.9, 0.05, 0.05)[None], Calibration(strength=0.0)
    )
    assert choice.tolist() == [0]


def test_settings_are_validated_naming_every_flag() -> None:
    with pytest.raises(InputError) as error:
        Calibration(tokens=-1, strength=float("nan"), plausibility=0.0)
    message = str(error.value)
    for flag in ("--calibrate-tokens", "--calibrate-strength", "--calibrate-plausibility"):
        assert flag in message
    assert not Calibration(tokens=0).active
    assert not Calibration(strength=0.0).active


@pytest.fixture(scope="module")
def world(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("calibration")
    home = Home(root / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    base = load_base(str(tiny_model_dir), home=home)
    adapters = {}
    for seed, user in enumerate(("alice", "bob"), start=1):
        adapters[user] = make_lora_dir(base.model, root / "src" / user, seed=seed, rank=4)
        publish_dir(registry, user, adapters[user], str(tiny_model_dir))
    return base, registry, adapters


@torch.no_grad()
def naive_calibrated(model, tokenizer, prompt: str, calibration: Calibration) -> list[int]:
    """The rule written out: each token from two unpadded full forwards, no cache."""
    request = encode_prompt(tokenizer, as_messages(prompt))
    null = encode_prompt(tokenizer, calibration.null_messages())
    stops = set(stop_token_ids(tokenizer))
    answer: list[int] = []
    for step in range(TOKENS):
        logps = [
            torch.log_softmax(model(input_ids=torch.tensor([ids + answer])).logits[0, -1], -1)
            for ids in (request, null)
        ]
        if step < calibration.tokens:
            plausible = logps[0] >= logps[0].max() + math.log(calibration.plausibility)
            score = (logps[0] - calibration.strength * logps[1]).masked_fill(~plausible, -1e30)
        else:
            score = logps[0]
        answer.append(int(score.argmax()))
        if answer[-1] in stops:
            break
    return answer


def reference(world, user: str | None, prompt: str, calibration: Calibration) -> list[int]:
    from peft import PeftModel

    base, _, adapters = world
    if user is None:
        return naive_calibrated(base.model, base.tokenizer, prompt, calibration)
    model = PeftModel.from_pretrained(base.model, str(adapters[user]))
    try:
        return naive_calibrated(model, base.tokenizer, prompt, calibration)
    finally:
        model.unload()


@pytest.mark.parametrize("calibrated_tokens", [3, TOKENS])
def test_mixed_batch_matches_the_naive_rule_row_by_row(world, calibrated_tokens: int) -> None:
    # 3: calibrated head, then plain greedy from request + head; TOKENS: all calibrated.
    base, registry, _ = world
    calibration = Calibration(tokens=calibrated_tokens, strength=1.0, plausibility=0.05)
    users = ["alice", None, "bob", "alice", "bob", None]
    requests = [Request(PROMPTS[i % 3], user=u) for i, u in enumerate(users)]
    with Engine(base, registry) as engine:
        calibrated = engine.generate(requests, max_new_tokens=TOKENS, calibration=calibration)
        plain = engine.generate(requests, max_new_tokens=TOKENS)
    for request, result in zip(requests, calibrated, strict=True):
        assert result.tokens == reference(world, request.user, request.prompt, calibration)
    # The rule changes answers here; otherwise the comparison above proves nothing.
    assert [r.tokens for r in calibrated] != [r.tokens for r in plain]


def test_inactive_calibration_is_plain_greedy(world) -> None:
    base, registry, _ = world
    requests = [Request(PROMPTS[0], user="alice"), Request(PROMPTS[1])]
    with Engine(base, registry) as engine:
        plain = engine.generate(requests, max_new_tokens=TOKENS)
        off = engine.generate(requests, max_new_tokens=TOKENS, calibration=Calibration(tokens=0))
    assert [r.tokens for r in off] == [r.tokens for r in plain]


def test_merged_batch_is_calibrated_too(world) -> None:
    # One user's rows and a long enough answer: the router folds the adapter into the base.
    from adaptkit.router import RoutingPolicy

    base, registry, _ = world
    calibration = Calibration(tokens=4, strength=1.0, plausibility=0.05)
    requests = [Request(prompt, user="bob") for prompt in PROMPTS]
    policy = RoutingPolicy(merge_min_new_tokens=1)
    with Engine(base, registry, policy=policy) as engine:
        results = engine.generate(requests, max_new_tokens=TOKENS, calibration=calibration)
    assert {result.plan.kind for result in results} == {"merged"}
    for request, result in zip(requests, results, strict=True):
        assert result.tokens == reference(world, "bob", request.prompt, calibration)

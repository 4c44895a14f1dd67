"""Mixed-user batched generation on the tiny model: parity with PEFT, isolation, merge, plans."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, peft_reference, publish_dir

from adaptkit.bank import Engine, Repetition
from adaptkit.bank.lora_linear import MultiLoraLinear
from adaptkit.base_model import load_base
from adaptkit.errors import InputError, UnknownUserError, UnknownVersionError
from adaptkit.home import Home
from adaptkit.registry import Registry
from adaptkit.router import Request, RoutingPolicy

PROMPTS = [
    "How long does it take me to get to the library?",
    "What should I cook for dinner tonight?",
    "What is the capital of France?",
    "weather station airport",
]
TOKENS = 10


@dataclass
class World:
    model_dir: Path
    home: Home
    registry: Registry
    adapters: dict[str, Path]  # user -> PEFT dir of their active version

    @property
    def base_name(self) -> str:
        return str(self.model_dir)

    def base(self, quant: str = "none"):
        return load_base(self.base_name, home=self.home, quant=quant)

    def engine(self, quant: str = "none", **options) -> Engine:
        options.setdefault("shared_dir", self.home.root / "shared")
        return Engine(self.base(quant), self.registry, **options)


@pytest.fixture(scope="module")
def world(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bank-world")
    home = Home(root / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    base = load_base(str(tiny_model_dir), home=home)
    # Different ranks, targets and scaling rules, so every adapter-math path is covered.
    shapes = {
        "alice": {"rank": 4, "targets": "all-linear"},
        "bob": {"rank": 8, "targets": ["q_proj", "v_proj"], "alpha": 4.0},
        "carol": {"rank": 2, "targets": ["gate_proj", "down_proj", "o_proj"], "use_rslora": True},
    }
    adapters = {}
    for seed, (user, shape) in enumerate(shapes.items()):
        adapters[user] = make_lora_dir(base.model, root / "src" / user, seed=seed + 1, **shape)
        publish_dir(registry, user, adapters[user], str(tiny_model_dir))
    shared = home.root / "shared"
    make_lora_dir(base.model, shared / "formal", seed=11, rank=4)
    make_lora_dir(base.model, shared / "brief", seed=12, rank=2, targets=["q_proj", "k_proj"])
    registry.ensure_user("newbie")  # known, but no adapter yet
    return World(tiny_model_dir, home, registry, adapters)


def reference(world: World, user: str | None, prompt: str, quant: str = "none") -> list[int]:
    base = world.base(quant)
    adapter = world.adapters[user] if user else None
    return peft_reference(base.model, base.tokenizer, adapter, prompt, TOKENS)


def test_users_adapters_really_differ(world: World) -> None:
    # Isolation tests below are only meaningful if each adapter changes the answer.
    answers = {u: tuple(reference(world, u, PROMPTS[0])) for u in (None, "alice", "bob", "carol")}
    assert len(set(answers.values())) == 4, answers


def test_mixed_batch_matches_peft_row_by_row(world: World) -> None:
    users = ["alice", "bob", None, "carol", "bob", "alice"]
    requests = [Request(PROMPTS[i % 4], user=u) for i, u in enumerate(users)]
    with world.engine() as engine:
        results = engine.generate(requests, max_new_tokens=TOKENS)
    for request, result in zip(requests, results, strict=True):
        assert result.tokens == reference(world, request.user, request.prompt), request
        assert result.plan.user == request.user


SYSTEM = {
    "role": "system",
    "content": "You answer questions about the Lexington weather station and the airport office.",
}


def test_shared_prefix_and_early_stops_match_peft_row_by_row(world: World, monkeypatch) -> None:
    """Rows with a long common prefix (prefilled once per adapter set, then each row's own
    tokens after padding) that stop at different steps (leaving the batch, adapters and
    cache with them) still get PEFT's tokens for their adapter alone."""
    users = ["alice", "bob", None, "carol", "bob", "alice", None]
    prompts = [[SYSTEM, {"role": "user", "content": PROMPTS[i % 4]}] for i in range(len(users))]
    base = world.base()
    tokenizer = base.tokenizer
    plain = [
        peft_reference(base.model, tokenizer, world.adapters.get(u), prompt, 40)
        for u, prompt in zip(users, prompts, strict=True)
    ]
    # The random tiny model never ends a turn: make the token found in most of its
    # answers (after their first token) a stop token.
    found = Counter(t for answer in plain for t in set(answer[1:]))
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(found.most_common(1)[0][0])
    expected = [
        peft_reference(base.model, tokenizer, world.adapters.get(u), prompt, 40)
        for u, prompt in zip(users, prompts, strict=True)
    ]
    assert len({len(e) for e in expected}) >= 3, expected  # rows stop at different steps

    widths: list[tuple[int, int]] = []
    with world.engine() as engine:
        engine.base.tokenizer.eos_token = tokenizer.eos_token
        forward = engine.base.model.forward

        def spy(*args, **kwargs):
            widths.append(tuple(kwargs["input_ids"].shape))
            return forward(*args, **kwargs)

        monkeypatch.setattr(engine.base.model, "forward", spy)
        results = engine.generate(
            [Request(p, user=u) for u, p in zip(users, prompts, strict=True)], max_new_tokens=40
        )
    assert [r.tokens for r in results] == expected
    # The prefix ran once for each of the 4 adapter sets (alice, bob, base, carol).
    assert widths[0][0] == 4 and widths[0][1] >= 8
    # Finished rows left the batch: later steps ran fewer rows.
    assert widths[-1][0] < len(users)


def test_isolation_same_prompt_different_users_any_order(world: World) -> None:
    expected = {u: reference(world, u, PROMPTS[1]) for u in ("alice", "bob", "carol", None)}
    with world.engine() as engine:
        for order in (["alice", "bob", "carol", None], [None, "carol", "bob", "alice"]):
            results = engine.generate(
                [Request(PROMPTS[1], user=u) for u in order], max_new_tokens=TOKENS
            )
            for user, result in zip(order, results, strict=True):
                assert result.tokens == expected[user], (order, user)


def test_uniform_batch_uses_the_cached_tensors_without_copying(world: World) -> None:
    with world.engine() as engine:
        adapter = engine.bank.load_user_active("alice")
        engine.set_rows([[(adapter, 1.0)], [(adapter, 1.0)]])
        name = "model.layers.0.self_attn.q_proj"
        assert engine.wrappers[name].delta.A.data_ptr() == adapter.modules[name].A.data_ptr()
        engine.clear_rows()
        assert all(w.delta is None for w in engine.wrappers.values())


def test_bitsandbytes_int8_base_matches_peft(world: World) -> None:
    # nf4 needs layers wider than its 64-value blocks: tested on SmolLM2 (integration).
    # PyTorch's int8 (--quant int8), which PEFT cannot wrap: tests/unit/test_quant.py.
    quant = "bnb-int8"
    requests = [Request(PROMPTS[0], user="alice"), Request(PROMPTS[0], user="bob")]
    with world.engine(quant) as engine:
        results = engine.generate(requests, max_new_tokens=TOKENS)
    for request, result in zip(requests, results, strict=True):
        assert result.tokens == reference(world, request.user, request.prompt, quant)


def test_merge_folds_and_unfolds_bitwise(world: World) -> None:
    policy = RoutingPolicy(merge_min_new_tokens=TOKENS)
    with world.engine(policy=policy) as engine:
        before = {n: w.base.weight.detach().clone() for n, w in engine.wrappers.items()}
        results = engine.generate([Request(PROMPTS[2], user="alice")], max_new_tokens=TOKENS)
        assert results[0].plan.kind == "merged"
        assert results[0].tokens == reference(world, "alice", PROMPTS[2])
        for name, wrapper in engine.wrappers.items():
            assert torch.equal(wrapper.base.weight, before[name]), name
        adapter = engine.bank.load_user_active("alice")
        with engine.merged([(adapter, 1.0)]):
            changed = engine.wrappers["model.layers.0.self_attn.q_proj"].base.weight
            assert not torch.equal(changed, before["model.layers.0.self_attn.q_proj"])
        short = engine.generate([Request(PROMPTS[2], user="alice")], max_new_tokens=TOKENS - 1)
        assert short[0].plan.kind == "adapter"  # below the policy's threshold


def test_quantized_base_is_never_merged_and_the_plan_says_why(world: World) -> None:
    policy = RoutingPolicy(merge_min_new_tokens=1)
    with world.engine("int8", policy=policy) as engine:
        result = engine.generate([Request(PROMPTS[0], user="alice")], max_new_tokens=4)[0]
        assert result.plan.kind == "adapter"
        assert "not merged" in result.plan.reason and "int8" in result.plan.reason
        adapter = engine.bank.load_user_active("alice")
        with pytest.raises(InputError, match="requantize"), engine.merged([(adapter, 1.0)]):
            pass


def test_close_restores_the_plain_model(world: World) -> None:
    base = world.base()
    engine = Engine(base, world.registry, shared_dir=world.home.root / "shared")
    assert any(isinstance(m, MultiLoraLinear) for m in base.model.modules())
    engine.close()
    assert not any(isinstance(m, MultiLoraLinear) for m in base.model.modules())


def test_plans_are_returned_and_logged(world: World, caplog: pytest.LogCaptureFixture) -> None:
    policy = RoutingPolicy(cold_start="formal")
    requests = [
        Request(PROMPTS[0]),
        Request(PROMPTS[0], user="alice"),
        Request(PROMPTS[0], user="bob", compose={"brief": 0.5}),
        Request(PROMPTS[0], user="newbie"),
    ]
    with (
        caplog.at_level(logging.INFO, logger="adaptkit.router"),
        world.engine(policy=policy) as engine,
    ):
        results = engine.generate(requests, max_new_tokens=3)
    kinds = [r.plan.kind for r in results]
    assert kinds == ["base", "adapter", "composed", "cold_start"]
    assert [(a.name, a.weight) for a in results[2].plan.adapters] == [("bob", 1.0), ("brief", 0.5)]
    assert results[1].plan.adapters[0].version == 1
    assert [a.name for a in results[3].plan.adapters] == ["formal"]
    assert "newbie" in results[3].plan.reason
    logged = [r.getMessage() for r in caplog.records if r.name == "adaptkit.router"]
    assert len(logged) == 4 and "composed" in logged[2] and "brief x0.5" in logged[2]


def test_cold_start_without_shared_adapter_is_the_base(world: World) -> None:
    with world.engine() as engine:
        result = engine.generate([Request(PROMPTS[3], user="newbie")], max_new_tokens=TOKENS)[0]
    assert result.plan.kind == "cold_start" and result.plan.adapters == ()
    assert "base model" in result.plan.reason
    assert result.tokens == reference(world, None, PROMPTS[3])


def test_unknown_user_is_an_error_before_any_compute(world: World, monkeypatch) -> None:
    with world.engine() as engine:
        monkeypatch.setattr(engine, "_compute", lambda *a, **k: pytest.fail("computed"))
        with pytest.raises(UnknownUserError, match="'mallory'"):
            engine.generate([Request("hi", user="alice"), Request("hi", user="mallory")])


def test_unknown_users_can_be_cold_started_by_policy(world: World) -> None:
    with world.engine(policy=RoutingPolicy(unknown_users="cold_start")) as engine:
        result = engine.generate([Request("hi", user="mallory")], max_new_tokens=2)[0]
    assert result.plan.kind == "cold_start" and "not in the registry" in result.plan.reason


def test_bad_row_with_errors_return_leaves_other_rows_untouched(world: World) -> None:
    good = [Request(PROMPTS[0], user="alice"), Request(PROMPTS[1], user="bob")]
    bad = Request(PROMPTS[2], user="carol", compose={"nope": 1.0})
    with world.engine() as engine:
        clean = engine.generate(good, max_new_tokens=TOKENS)
        mixed = engine.generate([good[0], bad, good[1]], max_new_tokens=TOKENS, errors="return")
    assert not mixed[1].ok and "'nope'" in str(mixed[1].error) and mixed[1].text is None
    assert "request 1" in str(mixed[1].error)
    assert [mixed[0].tokens, mixed[2].tokens] == [r.tokens for r in clean]
    assert mixed[0].plan.adapters == clean[0].plan.adapters


def test_new_version_is_served_on_the_next_request(world: World, tmp_path: Path) -> None:
    base = world.base()
    fresh = make_lora_dir(base.model, tmp_path / "v2", seed=99, rank=4)
    registry, user = world.registry, "dave"
    first = make_lora_dir(base.model, tmp_path / "v1", seed=98, rank=4)
    publish_dir(registry, user, first, world.base_name)
    with world.engine() as engine:
        before = engine.generate([Request(PROMPTS[0], user=user)], max_new_tokens=TOKENS)[0]
        used = engine.bank.stats().used_bytes
        publish_dir(registry, user, fresh, world.base_name)
        after = engine.generate([Request(PROMPTS[0], user=user)], max_new_tokens=TOKENS)[0]
        assert engine.bank.stats().used_bytes == used  # v1's copy was dropped, not kept stale
        registry.activate(user, 1)  # rollback is picked up just the same
        rolled = engine.generate([Request(PROMPTS[0], user=user)], max_new_tokens=TOKENS)[0]
    assert (before.plan.adapters[0].version, after.plan.adapters[0].version) == (1, 2)
    assert after.tokens == peft_reference(base.model, base.tokenizer, fresh, PROMPTS[0], TOKENS)
    assert before.tokens != after.tokens
    assert rolled.tokens == before.tokens and rolled.plan.adapters[0].version == 1


def test_pinned_versions_of_one_user_share_a_batch_with_the_active_one(
    world: World, tmp_path: Path
) -> None:
    base = world.base()
    user = "erin"
    first = make_lora_dir(base.model, tmp_path / "v1", seed=71, rank=4)
    second = make_lora_dir(base.model, tmp_path / "v2", seed=72, rank=2, targets=["o_proj"])
    publish_dir(world.registry, user, first, world.base_name)
    publish_dir(world.registry, user, second, world.base_name)  # v2 is active
    with world.engine() as engine:
        rows = engine.generate(
            [Request(PROMPTS[0], user=user, version=1), Request(PROMPTS[0], user=user)],
            max_new_tokens=TOKENS,
        )
        with pytest.raises(UnknownVersionError, match="'erin' has no version 3"):
            engine.generate([Request(PROMPTS[0], user=user, version=3)], max_new_tokens=2)
    assert [r.plan.adapters[0].version for r in rows] == [1, 2]
    assert rows[0].tokens == peft_reference(base.model, base.tokenizer, first, PROMPTS[0], TOKENS)
    assert rows[1].tokens == peft_reference(base.model, base.tokenizer, second, PROMPTS[0], TOKENS)


# -- repetition control: greedy parity with transformers' generate ----------------------

LOOP_TOKENS = 24  # long enough for the random tiny model to repeat itself
CONTROLS = {
    "penalty": {"repetition_penalty": 1.3},
    "reward": {"repetition_penalty": 0.8},
    "ngram2": {"no_repeat_ngram_size": 2},
    "penalty+ngram3": {"repetition_penalty": 1.15, "no_repeat_ngram_size": 3},
}


@pytest.mark.parametrize("control", CONTROLS, ids=list(CONTROLS))
@pytest.mark.parametrize("user", [None, "bob"], ids=["base", "peft-lora"])
def test_repetition_control_matches_transformers_generate(
    world: World, control: str, user: str | None
) -> None:
    options = CONTROLS[control]
    base = world.base()
    adapter = world.adapters.get(user) if user else None
    expected = peft_reference(
        base.model, base.tokenizer, adapter, PROMPTS[0], LOOP_TOKENS, **options
    )
    plain = peft_reference(base.model, base.tokenizer, adapter, PROMPTS[0], LOOP_TOKENS)
    assert expected != plain  # the control changes this answer: parity means something
    with world.engine() as engine:
        result = engine.generate(
            [Request(PROMPTS[0], user=user)],
            max_new_tokens=LOOP_TOKENS,
            repetition=Repetition(**options),
        )[0]
    assert result.tokens == expected


def test_mixed_batch_of_adapters_and_controls_equals_each_row_alone(world: World) -> None:
    """Rows of different adapters and controls, sharing a long prefix (left padding after
    it): each row gets what it gets alone, and what transformers gives it alone."""
    users = ["alice", "bob", None, "carol", "bob", None]
    hf_options = [
        {"repetition_penalty": 1.3},
        {},
        {"no_repeat_ngram_size": 2},
        {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3},
        {"no_repeat_ngram_size": 1},
    ]
    # The last row: OpenAI's penalties, which transformers does not have.
    settings = [Repetition(**o) for o in hf_options]
    settings.append(Repetition(frequency_penalty=0.5, presence_penalty=0.5))
    prompts = [[SYSTEM, {"role": "user", "content": PROMPTS[i % 4]}] for i in range(len(users))]
    base = world.base()
    expected = [
        peft_reference(base.model, base.tokenizer, world.adapters.get(u), p, LOOP_TOKENS, **o)
        for u, p, o in zip(users, prompts, hf_options, strict=False)
    ]
    requests = [Request(p, user=u) for u, p in zip(users, prompts, strict=True)]
    with world.engine() as engine:
        batch = engine.generate(requests, max_new_tokens=LOOP_TOKENS, repetition=settings)
        each = [
            engine.generate([r], max_new_tokens=LOOP_TOKENS, repetition=s)[0]
            for r, s in zip(requests, settings, strict=True)
        ]
        plain = engine.generate(requests[-1:], max_new_tokens=LOOP_TOKENS)[0]
        # A bad row leaves the batch; the others keep their own controls.
        bad = Request(PROMPTS[0], user="carol", compose={"nope": 1.0})
        kept = engine.generate(
            [requests[0], bad, requests[2]],
            max_new_tokens=LOOP_TOKENS,
            repetition=[settings[0], Repetition(no_repeat_ngram_size=1), settings[2]],
            errors="return",
        )
        with pytest.raises(InputError, match="one per request"):
            engine.generate(requests, repetition=settings[:2])
    assert [r.tokens for r in batch] == [r.tokens for r in each]
    assert [r.tokens for r in batch[:5]] == expected
    assert batch[5].tokens != plain.tokens  # OpenAI's penalties act on the last row
    assert not kept[1].ok and [kept[0].tokens, kept[2].tokens] == [each[0].tokens, each[2].tokens]

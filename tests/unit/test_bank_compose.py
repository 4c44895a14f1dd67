"""Composition: run-time linear sums and offline TIES/DARE, each against PEFT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, publish_dir, reference_tokens
from peft import PeftModel

from adaptkit.bank import Engine, build_weighted_adapter
from adaptkit.base_model import load_base
from adaptkit.errors import InputError
from adaptkit.home import Home
from adaptkit.registry import Registry
from adaptkit.router import Request

PROMPT = "How long does it take me to get to the library?"
TOKENS = 10


@pytest.fixture
def setup(tiny_model_dir: Path, tmp_path: Path):
    home = Home(tmp_path / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    base = load_base(str(tiny_model_dir), home=home)
    shared = tmp_path / "shared"
    user_dir = make_lora_dir(base.model, tmp_path / "alice", seed=1, rank=4)
    publish_dir(registry, "alice", user_dir, str(tiny_model_dir))
    make_lora_dir(base.model, shared / "formal", seed=2, rank=2, b_std=0.8)
    make_lora_dir(base.model, shared / "brief", seed=3, rank=4, targets=["q_proj", "v_proj"])
    return home, registry, str(tiny_model_dir), user_dir, shared


def peft_weighted(home, model_dir, sources, combination, seed=0, **options) -> list[int]:
    """PEFT's answer with ``add_weighted_adapter`` of ``sources`` [(dir, weight)] active."""
    base = load_base(model_dir, home=home)
    model = PeftModel.from_pretrained(base.model, str(sources[0][0]), adapter_name="s0")
    for i, (path, _) in enumerate(sources[1:], start=1):
        model.load_adapter(str(path), adapter_name=f"s{i}")
    names = [f"s{i}" for i in range(len(sources))]
    torch.manual_seed(seed)  # DARE drops at random: the same seed as the offline build
    model.add_weighted_adapter(
        names, [w for _, w in sources], "mix", combination_type=combination, **options
    )
    model.set_adapter("mix")
    return reference_tokens(model, base.tokenizer, PROMPT, TOKENS)


def test_runtime_composition_equals_peft_cat(setup) -> None:
    home, registry, model_dir, user_dir, shared = setup
    weights = {"formal": 0.7, "brief": -0.4}
    with Engine(load_base(model_dir, home=home), registry, shared_dir=shared) as engine:
        results = engine.generate(
            [
                Request(PROMPT, user="alice", compose=weights, user_weight=0.5),
                Request(PROMPT, user="alice"),  # same user, no composition, same batch
            ],
            max_new_tokens=TOKENS,
        )
    expected = peft_weighted(
        home, model_dir,
        [(user_dir, 0.5), (shared / "formal", 0.7), (shared / "brief", -0.4)], "cat",
    )  # fmt: skip
    assert results[0].plan.kind == "composed"
    assert results[0].tokens == expected
    assert results[1].tokens != expected  # the composition really changed the answer


def test_uniform_composed_batch_takes_the_shared_path_and_still_matches(setup) -> None:
    home, registry, model_dir, user_dir, shared = setup
    with Engine(load_base(model_dir, home=home), registry, shared_dir=shared) as engine:
        rows = [Request(PROMPT, user="alice", compose={"formal": 1.5})] * 2
        results = engine.generate(rows, max_new_tokens=TOKENS)
    expected = peft_weighted(home, model_dir, [(user_dir, 1.0), (shared / "formal", 1.5)], "cat")
    assert [r.tokens for r in results] == [expected, expected]


@pytest.mark.parametrize("combination", ["ties", "dare_linear"])
def test_offline_ties_and_dare_build_what_peft_builds(setup, tmp_path, combination) -> None:
    home, registry, model_dir, user_dir, shared = setup
    # TIES and DARE (non-SVD) need equal ranks: a rank-4 partner for alice's rank 4.
    partner = make_lora_dir(load_base(model_dir, home=home).model, tmp_path / "p", seed=5)
    sources = [(user_dir, 0.6), (partner, 0.4)]
    built = build_weighted_adapter(
        load_base(model_dir, home=home), sources, shared / "mixed",
        combination_type=combination, density=0.5, seed=7,
    )  # fmt: skip
    with Engine(load_base(model_dir, home=home), registry, shared_dir=shared) as engine:
        served = engine.generate([Request(PROMPT, compose={"mixed": 1.0})], max_new_tokens=TOKENS)
    expected = peft_weighted(home, model_dir, sources, combination, seed=7, density=0.5)
    assert built == shared / "mixed"
    assert served[0].tokens == expected


def test_offline_build_validates_before_work(setup, tmp_path) -> None:
    home, registry, model_dir, user_dir, shared = setup
    base = load_base(model_dir, home=home)
    with pytest.raises(InputError, match="combination_type 'avg'"):
        build_weighted_adapter(base, [(user_dir, 1.0)], tmp_path / "x", combination_type="avg")
    with pytest.raises(InputError, match="weight of adapter .*alice.* is nan"):
        build_weighted_adapter(base, [(user_dir, float("nan"))], tmp_path / "x")
    with pytest.raises(InputError, match="same rank.*formal.*r=2"):
        build_weighted_adapter(base, [(user_dir, 1.0), (shared / "formal", 1.0)], tmp_path / "x")
    with pytest.raises(InputError, match="not empty"):
        build_weighted_adapter(base, [(user_dir, 1.0)], shared)
    engine = Engine(base, registry, shared_dir=shared)
    with pytest.raises(InputError, match="close the Engine"):
        build_weighted_adapter(base, [(user_dir, 1.0)], tmp_path / "y")
    engine.close()

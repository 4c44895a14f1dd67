"""Fixed row slots, the per-row adapters of a continuous batch: every row computes exactly
its own adapters' delta through joins, leaves, rank and capacity growth, and a session's
rows match PEFT's answer row by row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, peft_reference, publish_dir
from torch import nn

from adaptkit.bank import AdapterWeights, Engine, LoraWeights, MultiLoraLinear, Sampling
from adaptkit.bank.slots import RowSlots, compaction
from adaptkit.base_model import load_base
from adaptkit.home import Home
from adaptkit.registry import Registry
from adaptkit.router import Request

SIZES = {"q": (6, 5), "v": (6, 4)}


def lora(name: str, rank: int, seed: int) -> LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    fan_in, fan_out = SIZES[name]
    A = torch.randn(rank, fan_in, generator=generator)
    B = torch.randn(fan_out, rank, generator=generator)
    return LoraWeights(A, B, scale=0.5 + seed / 10)


def adapter(label: str, ranks: dict[str, int], seed: int) -> AdapterWeights:
    modules = {name: lora(name, rank, seed + i) for i, (name, rank) in enumerate(ranks.items())}
    return AdapterWeights(label, modules, None, Path(label), sha256=None)


@pytest.fixture()
def layers() -> dict[str, MultiLoraLinear]:
    torch.manual_seed(0)
    return {name: MultiLoraLinear(nn.Linear(*size)) for name, size in SIZES.items()}


def check(layers: dict[str, MultiLoraLinear], rows: list) -> None:
    """Each row's output is its base output plus its own adapters' deltas (the LoRA
    formula, computed here row by row), and nothing of any other row's."""
    x = torch.randn(len(rows), 3, 6)
    for name, layer in layers.items():
        got = layer(x)
        with torch.no_grad():
            for i, row in enumerate(rows):
                want = layer.base(x[i])
                for weights, weight in row:
                    if name in weights.modules:
                        piece = weights.modules[name]
                        want = want + (x[i] @ piece.A.T @ piece.B.T) * piece.scale * weight
                torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


def test_rows_compute_their_own_adapters_through_joins_and_leaves(layers) -> None:
    alice = adapter("alice", {"q": 2, "v": 2}, seed=1)
    bob = adapter("bob", {"q": 4, "v": 4}, seed=3)
    carol = adapter("carol", {"q": 4}, seed=5)  # no "v": that layer adds nothing for her
    dave = adapter("dave", {"v": 8}, seed=7)
    rows = [[(alice, 1.0)], [], [(bob, 1.0), (carol, 0.5)], [(dave, 1.0)], [(carol, 2.0)]]
    slots = RowSlots(layers, capacity=2)

    slots.append(rows[:2])
    slots.point(0, 2)
    check(layers, rows[:2])

    slots.append(rows[2:])  # more rows than the capacity; a higher rank (composition: 8)
    assert slots.capacity == 8 and slots.rows == 5
    slots.point(2, 5)  # the joiners alone, as their prefill computes
    check(layers, rows[2:])
    slots.point(0, 5)
    check(layers, rows)

    order = compaction(5, [1, 3, 4])  # rows 0 and 2 leave: 3 takes slot 0, 4 takes slot 2
    assert order == [3, 1, 4]
    slots.compact(order)
    slots.point(0, 3)
    check(layers, [rows[i] for i in order])

    # Past the capacity again with rows that lack a layer the others have: it grows too.
    more = [[], [(carol, 1.0)], [], [(alice, 1.0)], [(carol, 1.0)], [], []]
    slots.append(more)
    assert slots.capacity == 16 and slots.rows == 10
    slots.point(0, 10)
    check(layers, [rows[i] for i in order] + more)

    slots.clear()
    assert slots.rows == 0 and all(layer.delta is None for layer in layers.values())
    slots.append([[], []])  # base-only rows: no layer computes a delta
    slots.point(0, 2)
    assert all(layer.delta is None for layer in layers.values())


def test_compaction_moves_one_row_per_leaver_below_the_new_size() -> None:
    assert compaction(5, [0, 2, 4]) == [0, 4, 2]
    assert compaction(3, [0, 1, 2]) == [0, 1, 2]
    assert compaction(3, [1, 2]) == [2, 1]
    assert compaction(2, []) == []
    order = compaction(8, [0, 1, 5, 6, 7])
    assert sorted(order) == [0, 1, 5, 6, 7]
    assert sum(1 for i, source in enumerate(order) if source != i) == 3


def test_compact_refuses_an_order_that_would_overwrite_a_kept_row(layers) -> None:
    slots = RowSlots(layers)
    row = [(adapter("alice", {"q": 2}, seed=1), 1.0)]
    slots.append([row, row, row])
    with pytest.raises(ValueError, match="compaction"):
        slots.compact([1, 0])


def test_session_rows_joining_past_the_capacity_match_peft_row_by_row(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    home = Home(tmp_path / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    reference = load_base(str(tiny_model_dir), home=home)
    shapes = {  # ranks that differ, and one adapter on the top layer's MLP only
        "alice": {"rank": 2},
        "bob": {"rank": 8},
        "carol": {"rank": 4, "targets": ["gate_proj", "up_proj"], "layers_to_transform": [1]},
    }
    dirs = {}
    for seed, (user, shape) in enumerate(shapes.items(), start=1):
        dirs[user] = make_lora_dir(reference.model, tmp_path / user, seed=seed, **shape)
        publish_dir(registry, user, dirs[user], str(tiny_model_dir))
    prompts = ["What should I cook tonight?", "How far is the library?", "weather airport"]
    users = ["alice", None, "bob", "carol", "bob", "alice", "carol", None, "alice", "bob"]
    lengths = [9, 4, 12, 7, 3, 10, 8, 6, 5, 11]
    requests = [Request(prompts[i % 3], user=u) for i, u in enumerate(users)]
    want = [
        peft_reference(reference.model, reference.tokenizer, dirs.get(r.user), r.prompt, n)
        for r, n in zip(requests, lengths, strict=True)
    ]
    with Engine(load_base(str(tiny_model_dir), home=home), registry, shared_dir=tmp_path) as engine:
        session = engine.session()
        rows = []
        entries = [(r, Sampling(max_new_tokens=n)) for r, n in zip(requests, lengths, strict=True)]
        widest = 0
        for _ in range(40):
            rows += session.admit(entries[len(rows) : len(rows) + 3])  # 3 join each step
            widest = max(widest, len(session.rows))
            if not session.rows and len(rows) == len(requests):
                break
            session.step()
    assert widest > 8  # past the slots' first capacity
    assert [row.tokens for row in rows] == want

"""SplitForward: cached bottom layers + sparse logits give the model's own numbers."""

from __future__ import annotations

import pytest
import torch

from adaptkit.base_model import load_base
from adaptkit.errors import InputError
from adaptkit.home import Home
from adaptkit.online.slot import AdapterSlot, encode_rows
from adaptkit.training import LoraSpec
from tests.tiny_model import make_tiny_model_dir

ROWS = [
    (({"role": "user", "content": "How long to the library?"},), "By bicycle, 12 minutes."),
    (({"role": "user", "content": "Hi"},), "Hello there, how are you today?"),
    (({"role": "user", "content": "What should I cook tonight for us?"},), "A curry."),
]


@pytest.fixture(scope="module")
def deep_base(tmp_path_factory: pytest.TempPathFactory):
    path = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-deep"), layers=4)
    return load_base(str(path), home=Home(tmp_path_factory.mktemp("home")))


def full_reference(slot: AdapterSlot, encoded, adapter: bool = True) -> torch.Tensor:
    """Logits of the model's plain forward at the scored positions, row-major."""
    logits = slot.logits(encoded, adapter=adapter)[:, :-1]
    return logits[encoded.labels[:, 1:] != -100]


@pytest.mark.parametrize("top_layers", [0, 1, 3])
def test_split_forward_matches_the_plain_forward(deep_base, top_layers: int) -> None:
    slot = AdapterSlot(deep_base, LoraSpec(rank=4, top_layers=top_layers))
    try:
        torch.manual_seed(0)
        for parameter in slot.parameters():  # B starts at 0: make the adapter matter
            torch.nn.init.normal_(parameter, std=0.3)
        assert slot.forward.start == (4 - top_layers if top_layers else 0)
        encoded = encode_rows(deep_base.tokenizer, ROWS, 64)
        for _ in range(2):  # the second pass reads the cached bottom layers
            ours = slot.scored(encoded)
            assert torch.allclose(ours.logits, full_reference(slot, encoded), atol=1e-5)
        if top_layers:
            assert slot.forward.hits == len(ROWS) and slot.forward.misses == len(ROWS)
        disabled = slot.scored(encoded, adapter=False).logits
        assert torch.allclose(disabled, full_reference(slot, encoded, adapter=False), atol=1e-5)
        assert not torch.allclose(disabled, ours.logits, atol=1e-3)  # the adapter matters

        # Gradients w.r.t. the adapter equal the plain forward's.
        sums, counts = slot.scored(encoded).sequence_logps()
        (sums.sum() / counts.sum()).backward()
        ours_grads = [p.grad.clone() for p in slot.parameters()]
        slot.model.zero_grad()
        logits = slot.logits(encoded)[:, :-1]
        mask = encoded.labels[:, 1:] != -100
        picked = torch.log_softmax(logits, -1).gather(
            -1, encoded.labels[:, 1:].clamp(min=0)[..., None]
        )
        (picked.squeeze(-1)[mask].sum() / mask.sum()).backward()
        for mine, theirs in zip(ours_grads, slot.parameters(), strict=True):
            assert torch.allclose(mine, theirs.grad, atol=1e-5)
    finally:
        slot.model.unload()


def test_rows_of_a_batch_are_scored_as_alone(deep_base) -> None:
    """Right padding never leaks into a row: the batch equals each row on its own."""
    slot = AdapterSlot(deep_base, LoraSpec(rank=4, top_layers=2))
    try:
        batch = slot.scored(encode_rows(deep_base.tokenizer, ROWS, 64))
        for index, row in enumerate(ROWS):
            alone = slot.scored(encode_rows(deep_base.tokenizer, [row], 64))
            assert torch.allclose(batch.select(index, index + 1).logits, alone.logits, atol=1e-5)
    finally:
        slot.model.unload()


def test_top_layers_beyond_the_model_names_the_flag(deep_base) -> None:
    with pytest.raises(InputError, match="--top-layers 9: the model has only 4"):
        LoraSpec(top_layers=9).peft_config(deep_base.model)
    with pytest.raises(InputError, match="--top-layers must be"):
        LoraSpec(top_layers=-1)

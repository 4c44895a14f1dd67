"""SplitForward: cached bottom layers + sparse logits give the model's own numbers."""

from __future__ import annotations

import pytest
import torch

from adaptkit.base_model import load_base
from adaptkit.errors import InputError
from adaptkit.home import Home
from adaptkit.learning import AdapterSlot, LoraSpec, encode_rows
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


@pytest.fixture(scope="module")
def deep_base64(tmp_path_factory: pytest.TempPathFactory):
    """The same tiny model in float64: the parity checks below are then exact enough to
    tell a wrong mask or position from summation order."""
    path = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-deep64"), layers=4)
    base = load_base(str(path), home=Home(tmp_path_factory.mktemp("home64")))
    base.model.to(torch.float64)
    return base


def full_reference(slot: AdapterSlot, encoded, adapter: bool = True) -> torch.Tensor:
    """Logits of the model's plain forward at the scored positions, row-major."""
    logits = slot.logits(encoded, adapter=adapter)[:, :-1]
    return logits[encoded.labels[:, 1:] != -100]


def assert_same(ours: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal up to rounding, relative to the tensor's own scale (single entries cancel).

    Packed rows sum in another order than a padded batch. In float64 the gap is
    ~1e-7 of the scale (the RMSNorm computes in float32 whatever the dtype); a wrong
    mask or position moves entries by a good fraction of it.
    """
    scale = max(float(reference.detach().abs().max()), 1.0)
    tolerance = 1e-6 if reference.dtype == torch.float64 else 1e-4
    torch.testing.assert_close(ours, reference, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("top_layers", [0, 1, 3])
def test_split_forward_matches_the_plain_forward(deep_base64, top_layers: int) -> None:
    slot = AdapterSlot(deep_base64, LoraSpec(rank=4, top_layers=top_layers))
    slot.model.to(torch.float64)
    try:
        torch.manual_seed(0)
        for parameter in slot.parameters():  # B starts at 0: make the adapter matter
            torch.nn.init.normal_(parameter, std=0.3)
        assert slot.forward.start == (4 - top_layers if top_layers else 0)
        encoded = encode_rows(deep_base64.tokenizer, ROWS, 64)
        for _ in range(2):  # the second pass reads the cached bottom layers
            ours = slot.scored(encoded)
            assert_same(ours.logits, full_reference(slot, encoded))
        if top_layers:
            assert slot.forward.hits == len(ROWS) and slot.forward.misses == len(ROWS)
        disabled = slot.scored(encoded, adapter=False).logits
        assert_same(disabled, full_reference(slot, encoded, adapter=False))
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
            assert_same(mine, theirs.grad)
    finally:
        slot.model.unload()


# Rows that share more than the chat template: a DPO-like pair (one request, two
# answers) and an exact duplicate. Packing computes each shared prefix once.
SHARING_ROWS = [
    *ROWS,
    (({"role": "user", "content": "How long to the library?"},), "On foot, 40 minutes."),
    ROWS[1],
]


@pytest.mark.parametrize("pack_tokens", [1024, 8])  # 8: every row packed on its own
@pytest.mark.parametrize("top_layers", [0, 2])
def test_rows_of_a_batch_are_scored_as_alone(
    deep_base64, top_layers: int, pack_tokens: int
) -> None:
    """Neither padding nor a prefix shared with other rows leaks into a row: the batch
    equals each row on its own."""
    slot = AdapterSlot(deep_base64, LoraSpec(rank=4, top_layers=top_layers))
    slot.model.to(torch.float64)
    slot.forward.pack_tokens = pack_tokens
    try:
        torch.manual_seed(0)
        for parameter in slot.parameters():
            torch.nn.init.normal_(parameter, std=0.3)
        batch = slot.scored(encode_rows(deep_base64.tokenizer, SHARING_ROWS, 64))
        for index, row in enumerate(SHARING_ROWS):
            alone = slot.scored(encode_rows(deep_base64.tokenizer, [row], 64))
            assert_same(batch.select(index, index + 1).logits, alone.logits)
    finally:
        slot.model.unload()


def test_top_layers_beyond_the_model_names_the_flag(deep_base) -> None:
    with pytest.raises(InputError, match="--top-layers 9: the model has only 4"):
        LoraSpec(top_layers=9).peft_config(deep_base.model)
    with pytest.raises(InputError, match="--top-layers must be"):
        LoraSpec(top_layers=-1)

"""One optimizer step of an online update: adaptkit's split forward vs PEFT's own forward.

    python benchmarks/online_step.py --json OUT.json

Same base (the packaged SmolLM2-135M), same adapter (the online trainer's default
shape: rank 8 on the MLPs of the top 40% of the layers), same 10 rows (4 feedback
answers, 2 replayed answers, 4 anchor prompts with their answers), same loss (token
mean NLL on the answers). Per repeat, interleaved:

* ``peft``: ``PeftModel(input_ids).logits`` over every position, loss, backward;
* ``split``: ``SplitForward.scored`` -- the frozen layers below the adapter read from
  the per-row cache, the top layers and the vocabulary projection only where an
  answer token is predicted -- loss, backward.

Writes medians over ``--repeats``, their ratio, and the two losses (equal up to
float error: the split forward is the same math).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adaptkit.base_model import DEFAULT_BASE, load_base  # noqa: E402
from adaptkit.home import Home  # noqa: E402
from adaptkit.learning import (  # noqa: E402
    ANCHOR_PROMPTS,
    AdapterSlot,
    encode_rows,
    losses,
    online_lora,
)
from adaptkit.prompting import as_messages  # noqa: E402

ROWS = [
    (f"How do I get to the {place}?", f"By bicycle from Lexington it takes about {m} minutes.")
    for place, m in (("library", 12), ("gym", 9), ("museum", 21), ("bakery", 7), ("park", 5))
] + [
    (prompt, "Here is a short, plain answer to that question, in one sentence.")
    for prompt in ANCHOR_PROMPTS[:5]
]


def step(slot: AdapterSlot, encoded, split: bool) -> tuple[float, float]:
    """(seconds, loss) of forward + backward."""
    slot.model.zero_grad(set_to_none=True)
    began = time.perf_counter()
    if split:
        sums, counts = slot.scored(encoded).sequence_logps()
    else:
        sums, counts = losses.sequence_logps(slot.logits(encoded), encoded.labels)
    loss = losses.sft_loss(sums, counts)
    loss.backward()
    return time.perf_counter() - began, loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--home", type=Path, default=None, help="home holding the base model")
    parser.add_argument("--base", default=DEFAULT_BASE)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    home = Home(args.home or Path(tempfile.mkdtemp(prefix="online-step-"))).ensure()
    base = load_base(args.base, home=home)
    spec = online_lora(base.model.config.num_hidden_layers)
    slot = AdapterSlot(base, spec)
    torch.manual_seed(0)
    for parameter in slot.parameters():  # a trained-looking adapter, not B = 0
        torch.nn.init.normal_(parameter, std=0.01)
    encoded = encode_rows(base.tokenizer, [(tuple(as_messages(q)), a) for q, a in ROWS], 96)
    step(slot, encoded, split=True)  # fills the cache, as the first step of an update does
    step(slot, encoded, split=False)
    times: dict[str, list[float]] = {"split": [], "peft": []}
    loss = {}
    for _ in range(args.repeats):
        for name in ("peft", "split"):
            seconds, loss[name] = step(slot, encoded, split=name == "split")
            times[name].append(seconds)
    output = {
        "model": args.base,
        "adapter": {"rank": spec.rank, "targets": spec.targets, "top_layers": spec.top_layers},
        "rows": len(ROWS),
        "tokens": int(encoded.attention_mask.sum()),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "split_step_ms_p50": 1000 * statistics.median(times["split"]),
        "peft_step_ms_p50": 1000 * statistics.median(times["peft"]),
        "speedup": statistics.median(times["peft"]) / statistics.median(times["split"]),
        "loss_split": loss["split"],
        "loss_peft": loss["peft"],
    }
    slot.model.unload()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(output, indent=2))
    print(json.dumps(output, indent=2))


if __name__ == "__main__":
    main()

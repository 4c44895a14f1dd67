"""The arena's answering workload: many adapter versions, a few prompts each.

    python benchmarks/arena_answering.py --json OUT.json [--model-cache DIR]

An arena run answers, for every user, the deployment requests with each version of
the learning curve (k = 1, 2, 4, ...) and the probes and leakage requests with the
final one: many adapter versions, a handful of prompts each. This times that shape
on SmolLM2-135M (fp32), rank-8 MLP adapters on the top 12 layers (the arena's),
random weights published through the registry, every row generating exactly
``--new-tokens`` tokens (so every way does the same work):

  peft_per_version    PEFT, set_adapter + one generate per version (its prompts)
  peft_mixed          PEFT, one generate per batch of --batch rows, adapter_names per row
  bank_per_version    the bank's Engine, one call per version (its prompts)
  bank_mixed          the bank's Engine, --batch rows of any versions per call, rows
                      sorted by prompt length
  bank_mixed_calibrated  bank_mixed with the arena's calibrated decoding (its first 3
                      tokens scored against a content-free twin row; what the arena does)

Each way runs once per repeat, in rotating order; reported: the median seconds per
prompt, and each way's per-repeat time over peft_per_version's (median of ratios).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is no package
from bank import BASE, common_parser, make_adapters, progress, scratch_home  # noqa: E402

from adaptkit.arena.episodes import load_episodes  # noqa: E402
from adaptkit.arena.session import BUNDLED_SUITE  # noqa: E402
from adaptkit.bank import Calibration, Engine  # noqa: E402
from adaptkit.base_model import load_base  # noqa: E402
from adaptkit.prompting import as_messages, encode_prompt, left_pad, pad_token_id  # noqa: E402
from adaptkit.router import Request, RoutingPolicy  # noqa: E402

TARGETS = ("gate_proj", "up_proj", "down_proj")
TOP_LAYERS = 12


def arena_prompts(count: int) -> list[str]:
    """Deployment requests and probes of the bundled suite, as the arena asks them."""
    suite = load_episodes(BUNDLED_SUITE)
    texts = [t.intent for user in suite.users for t in suite.deployment[user]]
    texts += [t.intent for t in suite.probes]
    return texts[:count]


def main() -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--versions", type=int, default=8, help="adapter versions")
    parser.add_argument("--prompts", type=int, default=12, help="prompts per version")
    parser.add_argument("--batch", type=int, default=48, help="rows per mixed call")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="adaptkit-bench-") as scratch:
        root = Path(scratch)
        home, registry = scratch_home(root, args.model_cache)
        ours = load_base(BASE, home=home)
        layers = ours.model.config.num_hidden_layers
        progress(f"making {args.versions} adapter versions")
        staged = make_adapters(
            ours,
            root,
            args.versions,
            rank=8,
            seed=0,
            targets=list(TARGETS),
            layers=list(range(layers - TOP_LAYERS, layers)),
        )
        # Versions of a few users, as the arena has them (curve points of each user).
        published = []
        for index, path in enumerate(staged):
            info = registry.publish(
                f"user{index // 4}",
                path,
                method="random",
                base_model=BASE,
                data_digest="0" * 64,
                metrics={},
                config={},
            )
            published.append(info)
        texts = arena_prompts(args.versions * args.prompts)
        rows = [
            (published[i // args.prompts], texts[i % len(texts)])
            for i in range(args.versions * args.prompts)
        ]
        theirs = load_base(BASE, home=home)  # PEFT's own copy of the base
        ways = build_ways(args, ours, theirs, registry, published, rows, root / "shared")
        seconds = {name: [] for name in ways}
        for repeat in range(args.repeats):
            names = list(ways)
            names = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in names:
                start = time.perf_counter()
                with torch.inference_mode():
                    ways[name]()
                seconds[name].append(time.perf_counter() - start)
                progress(f"repeat {repeat + 1}: {name} {seconds[name][-1]:.1f} s")

    reference = seconds["peft_per_version"]
    results: dict[str, object] = {
        "model": BASE,
        "dtype": "float32",
        "adapter": f"rank 8, {'+'.join(TARGETS)}, top {TOP_LAYERS} layers",
        "versions": args.versions,
        "prompts_per_version": args.prompts,
        "rows": len(rows),
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "seconds_per_prompt_p50": {
            name: round(statistics.median(times) / len(rows), 4) for name, times in seconds.items()
        },
        "time_vs_peft_per_version": {
            name: round(statistics.median(t / r for t, r in zip(times, reference, strict=True)), 3)
            for name, times in seconds.items()
        },
        "seconds": {name: [round(t, 2) for t in times] for name, times in seconds.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def build_ways(
    args, ours, theirs, registry, published, rows, shared_dir: Path
) -> dict[str, Callable[[], object]]:
    tokens = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    engine = Engine(
        ours, registry, shared_dir=shared_dir, policy=RoutingPolicy(merge_min_new_tokens=None)
    )

    def request(info, text: str) -> Request:
        return Request(text, user=info.user_id, version=info.number)

    def bank_per_version() -> None:
        for info in published:
            engine.generate([request(i, t) for i, t in rows if i is info], **tokens)

    tokenizer = ours.tokenizer
    length = {text: len(encode_prompt(tokenizer, as_messages(text))) for _, text in rows}
    by_length = sorted(rows, key=lambda row: length[row[1]])

    def bank_mixed(calibration: Calibration | None = None) -> None:
        for start in range(0, len(by_length), args.batch):
            chunk = by_length[start : start + args.batch]
            engine.generate([request(i, t) for i, t in chunk], **tokens, calibration=calibration)

    def name_of(info) -> str:
        return f"{info.user_id}_v{info.number}"

    peft_model = None
    for info in published:
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(
                theirs.model, str(info.blob_path), adapter_name=name_of(info)
            )
        else:
            peft_model.load_adapter(str(info.blob_path), name_of(info))
    peft_model.eval()
    pad = pad_token_id(tokenizer)
    stops = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad, "do_sample": False}

    def peft_generate(chunk, adapter_names=None) -> None:
        ids, mask = left_pad([encode_prompt(tokenizer, as_messages(t)) for _, t in chunk], pad)
        extra = {"adapter_names": adapter_names} if adapter_names else {}
        peft_model.generate(input_ids=ids, attention_mask=mask, **tokens, **stops, **extra)

    def peft_per_version() -> None:
        for info in published:
            peft_model.set_adapter(name_of(info))
            peft_generate([(i, t) for i, t in rows if i is info])

    def peft_mixed() -> None:
        for start in range(0, len(by_length), args.batch):
            chunk = by_length[start : start + args.batch]
            peft_generate(chunk, [name_of(i) for i, _ in chunk])

    return {
        "peft_per_version": peft_per_version,
        "peft_mixed": peft_mixed,
        "bank_per_version": bank_per_version,
        "bank_mixed": bank_mixed,
        "bank_mixed_calibrated": lambda: bank_mixed(Calibration()),
    }


if __name__ == "__main__":
    main()

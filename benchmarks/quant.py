"""Quantized bases side by side on this CPU: fp32, bitsandbytes int8 / nf4, PyTorch int8.

    python benchmarks/quant.py --json OUT.json [--model-cache DIR] [--repeats 3]

One run, one process, the packaged SmolLM2-135M loaded four ways (``--quant none``,
``bnb-int8``, ``nf4``, ``int8``). For each:

* ``tokens_per_s``: the bank's ``Engine`` generating ``--new-tokens`` greedy tokens for
  1, 8 and 32 rows, every row a different user with a random all-linear rank-8 adapter
  (mixed batches, prompts of different lengths); median over ``--repeats``;
* ``online_step_ms``: one online training step (``benchmarks/online_step.py``'s rows and
  adapter: rank 8 on the MLPs of the top 40% of layers), cold (the frozen bottom layers
  computed, as the first step of an update does) and warm (bottom states cached);
* ``base_bytes``: the base's resident bytes, and ``adapters_in_fp32_ram``: how many
  rank-8 adapters fit next to it in the RAM the fp32 base takes plus a 1 GiB bank;
* ``parity`` (quantized backends): greedy answers to 16 arena requests through the
  engine, base only, equal to fp32's (fraction and the changed ones), teacher-forced
  top-1 agreement with fp32 along fp32's answers, and the fraction of the first 6 rows
  of that mixed, left-padded batch whose answer equals the same request alone.

``--paired``: the parity numbers, then only the tokens/s ratios to fp32 at 1, 8 and 32
rows, every backend run back to back per repeat (order rotating). Ratios are against
fp32 measured in the same run; the JSON is rewritten after each
backend, so a run cut short keeps what it measured. Floors: int8 >= 1.5x fp32 tokens/s
at 8 rows; int8's online step no slower than fp32's.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is no package
from bank import BASE, common_parser, make_adapters, progress, scratch_home  # noqa: E402
from online_step import ROWS, step  # noqa: E402

from adaptkit.arena import BUNDLED_SUITE  # noqa: E402
from adaptkit.arena.episodes import load_episodes  # noqa: E402
from adaptkit.bank import Engine  # noqa: E402
from adaptkit.base_model import load_base  # noqa: E402
from adaptkit.learning import AdapterSlot, encode_rows, online_lora  # noqa: E402
from adaptkit.prompting import as_messages  # noqa: E402
from adaptkit.router import Request  # noqa: E402

BACKENDS = ("none", "int8", "bnb-int8", "nf4")  # most telling first: each is written as done
ROW_COUNTS = (1, 8, 32)
PARITY_REQUESTS = 16
GiB = 1 << 30


def arena_prompts(count: int) -> list[str]:
    """Every k-th request of the bundled suite, so all users and task kinds appear."""
    suite = load_episodes(BUNDLED_SUITE)
    requests = [task.intent for user in suite.users for task in suite.deployment[user]]
    stride = max(1, len(requests) // count)
    return requests[::stride][:count]


def measure_engine(base, registry, users: list[str], prompts: list[str], args) -> dict:
    out: dict[str, object] = {}
    with Engine(base, registry) as engine:
        for rows in ROW_COUNTS:
            requests = [
                Request(prompts[i % len(prompts)], user=users[i % len(users)]) for i in range(rows)
            ]
            engine.generate(requests[:2], max_new_tokens=2)  # warm-up
            seconds = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                new = args.new_tokens
                engine.generate(requests, max_new_tokens=new, min_new_tokens=new)
                seconds.append(time.perf_counter() - began)
            out[f"rows_{rows}"] = round(rows * args.new_tokens / statistics.median(seconds), 2)
            progress(f"{base.quant}: {rows} rows {out[f'rows_{rows}']} tokens/s")
    return out


def measure_paired(bases: dict, registry, users: list[str], prompts: list[str], args) -> dict:
    """tokens/s of each base against fp32's, run back to back per repeat (order rotating),
    so both see the same load on a shared machine: the median of per-pair ratios."""
    engines = {quant: Engine(base, registry) for quant, base in bases.items()}
    out: dict[str, dict] = {quant: {} for quant in bases if quant != "none"}
    try:
        for rows in ROW_COUNTS:
            requests = [
                Request(prompts[i % len(prompts)], user=users[i % len(users)]) for i in range(rows)
            ]
            for engine in engines.values():
                engine.generate(requests[:2], max_new_tokens=2)  # warm-up
            seconds: dict[str, list[float]] = {quant: [] for quant in engines}
            order = list(engines)
            for repeat in range(args.repeats):
                for quant in order[repeat % len(order) :] + order[: repeat % len(order)]:
                    began = time.perf_counter()
                    new = args.new_tokens
                    engines[quant].generate(requests, max_new_tokens=new, min_new_tokens=new)
                    seconds[quant].append(time.perf_counter() - began)
            for quant in out:
                ratios = [f / q for f, q in zip(seconds["none"], seconds[quant], strict=True)]
                out[quant][f"rows_{rows}"] = round(statistics.median(ratios), 3)
            progress(f"paired {rows} rows: {out}")
    finally:
        for engine in engines.values():
            engine.close()
    return out


def measure_step(base, args) -> dict:
    bottoms: OrderedDict = OrderedDict()  # ours, so a repeat can start cold
    spec = online_lora(base.model.config.num_hidden_layers)
    slot = AdapterSlot(base, spec, bottoms=bottoms)
    torch.manual_seed(0)
    for parameter in slot.parameters():
        torch.nn.init.normal_(parameter, std=0.01)
    encoded = encode_rows(base.tokenizer, [(tuple(as_messages(q)), a) for q, a in ROWS], 96)
    cold, warm = [], []
    for _ in range(args.repeats):
        bottoms.clear()  # a cold update computes the frozen bottom layers
        cold.append(step(slot, encoded, split=True)[0])
        warm.append(step(slot, encoded, split=True)[0])
    slot.model.unload()
    return {
        "cold_ms": round(1e3 * statistics.median(cold), 1),
        "warm_ms": round(1e3 * statistics.median(warm), 1),
    }


def greedy(base, registry, prompts: list[str], tokens: int) -> tuple[list[list[int]], float]:
    """Base-only answers in one mixed-length batch, and the fraction of its first 6 rows
    whose answer equals the same request alone (padding and prefix split differ)."""
    with Engine(base, registry) as engine:
        batch = engine.generate([Request(p) for p in prompts], max_new_tokens=tokens)
        alone = [engine.generate([Request(p)], max_new_tokens=tokens)[0] for p in prompts[:6]]
    same = sum(a.tokens == b.tokens for a, b in zip(alone, batch, strict=False)) / len(alone)
    return [r.tokens for r in batch], same


def top1_agreement(base, reference_model, prompts: list[str], answers: list[list[int]]) -> float:
    """Teacher-forced along fp32's answers: how often the top token equals fp32's."""
    agree = total = 0
    tokenizer = base.tokenizer
    for prompt, answer in zip(prompts, answers, strict=True):
        ids = tokenizer.apply_chat_template(
            as_messages(prompt), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        sequence = torch.tensor([list(ids) + answer])
        start = len(ids) - 1
        with torch.no_grad():
            ours = base.model(sequence).logits[0, start:-1].argmax(-1)
            theirs = reference_model(sequence).logits[0, start:-1].argmax(-1)
        agree += int((ours == theirs).sum())
        total += len(answer)
    return round(agree / max(total, 1), 4)


def parity(base, fp32, registry, prompts: list[str], reference: list[list[int]], args) -> dict:
    answers, same = greedy(base, registry, prompts, args.new_tokens)
    changed = [p for p, a, b in zip(prompts, answers, reference, strict=True) if a != b]
    return {
        "answers_equal_fp32": round(1 - len(changed) / len(prompts), 4),
        "changed": changed,
        "top1_agreement": top1_agreement(base, fp32.model, prompts, reference),
        "rows_alone_equal_in_padded_batch": same,
    }


def main() -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--paired",
        action="store_true",
        help="only the parity numbers and the tokens/s ratios to fp32, every backend run "
        "back to back per repeat",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    backends = args.backends.split(",")
    prompts = arena_prompts(PARITY_REQUESTS)
    results: dict[str, object] = {
        "model": BASE,
        "torch_threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "users": args.users,
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="adaptkit-quant-") as scratch:
        root = Path(scratch)
        home, registry = scratch_home(root, args.model_cache)
        fp32 = load_base(BASE, home=home)
        staged = make_adapters(fp32, root, args.users, 8, 0)
        users = [f"user{i:03d}" for i in range(args.users)]
        adapter_bytes = sum(f.stat().st_size for f in staged[0].glob("*.safetensors"))
        for user, path in zip(users, staged, strict=True):
            registry.publish(
                user, path, method="random", base_model=BASE, data_digest="0" * 64,
                metrics={}, config={},
            )  # fmt: skip
        reference, reference_same = greedy(fp32, registry, prompts, args.new_tokens)
        if args.paired:
            bases = {q: fp32 if q == "none" else load_base(BASE, home=home, quant=q)
                     for q in ["none", *[b for b in backends if b != "none"]]}  # fmt: skip
            results["parity"] = {
                q: parity(base, fp32, registry, prompts, reference, args)
                for q, base in bases.items()
                if q != "none"
            }
            write(args.json, results)
            results["paired_tokens_per_s_vs_fp32"] = measure_paired(
                bases, registry, users, prompts, args
            )
            write(args.json, results)
            print(json.dumps(results, indent=2))
            return
        fp32_bytes = fp32.footprint_bytes
        budget = fp32_bytes + GiB
        for quant in backends:
            progress(f"loading {quant}")
            base = fp32 if quant == "none" else load_base(BASE, home=home, quant=quant)
            entry: dict[str, object] = {"backend": base.backend}
            entry["base_bytes"] = base.footprint_bytes
            entry["adapters_in_fp32_ram"] = (budget - base.footprint_bytes) // adapter_bytes
            entry["tokens_per_s"] = measure_engine(base, registry, users, prompts, args)
            if quant == "none":
                entry["parity"] = {"rows_alone_equal_in_padded_batch": reference_same}
            else:
                entry["parity"] = parity(base, fp32, registry, prompts, reference, args)
            progress(f"{quant}: online step")
            step_base = load_base(BASE, home=home, quant=quant)  # the trainer's own copy
            entry["online_step"] = measure_step(step_base, args)
            del step_base
            results["backends"][quant] = entry
            if quant != "none":
                del base
            gc.collect()
            write(args.json, summarize(results))

    print(json.dumps(summarize(results), indent=2))


def write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


def summarize(results: dict) -> dict:
    """Ratios to fp32 and the floors, from what is measured so far."""
    table = results["backends"]
    fp = table.get("none")
    if fp:
        for entry in table.values():
            entry["tokens_per_s_vs_fp32"] = {
                k: round(v / fp["tokens_per_s"][k], 3) for k, v in entry["tokens_per_s"].items()
            }
            entry["online_step_vs_fp32"] = {
                k: round(v / fp["online_step"][k], 3) for k, v in entry["online_step"].items()
            }
    if fp and "int8" in table:
        int8 = table["int8"]
        results["floors"] = {
            "int8 tokens/s at 8 rows >= 1.5x fp32": int8["tokens_per_s_vs_fp32"]["rows_8"] >= 1.5,
            "int8 online step (cold) <= fp32": int8["online_step_vs_fp32"]["cold_ms"] <= 1.0,
        }
    return results


if __name__ == "__main__":
    main()

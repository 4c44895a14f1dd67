"""Adapter bank vs PEFT, measured side by side in one run on SmolLM2-135M (fp32).

    python benchmarks/bank.py --json OUT.json [--model-cache DIR] [--users 64]

Users get all-linear rank-8 adapters with random (nonzero) weights, published
through the registry into a temporary home; no training is needed to time
loading, switching and batched generation. Every number is a median over
repeats; PEFT is measured in the same process on its own copy of the base.

Keys (docs/benchmarks.md explains each against its PEFT peer):
  activation_ms_p50 / peft_set_adapter_ms_p50      switching the active user
  cold_load_ms_p50 / peft_load_adapter_ms_p50      registry blob on disk -> usable
  mixed8_vs_single_throughput / peft_...           8 rows of 8 users / 8 rows of one user
  merged_vs_base_throughput                        folded adapter vs plain base, tokens/s
  cached_adapters_per_GiB                          rank-8 adapters the RAM tier holds in 1 GiB
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from adaptkit.bank import Engine
from adaptkit.base_model import load_base
from adaptkit.home import Home
from adaptkit.prompting import as_messages, encode_prompt, end_of_turn_id
from adaptkit.registry import Registry
from adaptkit.router import Request, RoutingPolicy

BASE = "smollm2-135m-instruct"
PROMPTS = [
    "How long does it take me to get to the train station?",
    "What should I cook for dinner tonight?",
    "Suggest a weekend activity.",
    "How do I get to the museum from here?",
    "What is a good gift for my sister?",
    "Plan my morning routine.",
    "Which bike route is the safest?",
    "Recommend a book for the holidays.",
]


def progress(message: str) -> None:
    print(f"[bank bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 3)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def common_parser(doc: str) -> argparse.ArgumentParser:
    """``--json`` and ``--model-cache``, the flags every bank benchmark takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=os.environ.get("ADAPTKIT_TEST_MODEL_CACHE"),
        help="an adaptkit home whose models/ already holds the converted SmolLM2 "
        "[default: $ADAPTKIT_TEST_MODEL_CACHE; else converted into the temp home]",
    )
    return parser


def scratch_home(root: Path, model_cache: Path | None) -> tuple[Home, Registry]:
    """A fresh home under ``root`` (reusing a converted model cache) and its registry."""
    home = Home(root / "home").ensure()
    if model_cache is not None:
        (home.models_dir / BASE).symlink_to(Path(model_cache) / "models" / BASE)
    return home, Registry(home.registry_url, home.adapters_dir)


def user_names(users: int) -> list[str]:
    """``user000``, ``user001``, ...: the benchmarks' users."""
    return [f"user{i:03d}" for i in range(users)]


def publish_users(registry: Registry, adapters: Mapping[str, Path]) -> dict[str, object]:
    """Publish each user's adapter directory (``make_adapters``) as their active
    version. Returns each user's version."""
    return {
        user: registry.publish(
            user,
            path,
            method="random",
            base_model=BASE,
            data_digest="0" * 64,
            metrics={},
            config={},
        )
        for user, path in adapters.items()
    }


def make_adapters(
    base,
    root: Path,
    users: int,
    rank: int,
    seed: int,
    *,
    targets: str | list[str] = "all-linear",
    layers: list[int] | None = None,
) -> list[Path]:
    """One PEFT adapter made with PEFT, then copies of it with fresh random weights."""
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    template = root / "template"
    peft_model = get_peft_model(base.model, config)
    peft_model.save_pretrained(template)
    peft_model.unload()
    keys = load_file(template / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for index in range(users):
        tensors = {
            key: torch.randn(t.shape, generator=generator)
            * (0.02 if "lora_B" in key else 1.0 / t.shape[1] ** 0.5)
            for key, t in keys.items()
        }
        path = root / f"staged-{index}"
        path.mkdir()
        shutil.copy(template / "adapter_config.json", path / "adapter_config.json")
        save_file(tensors, path / "adapter_model.safetensors")
        paths.append(path)
    return paths


def paired(
    first: Callable[[], object], second: Callable[[], object], tokens: int, repeats: int
) -> tuple[list[float], list[float], float]:
    """tokens/s of each, and the median of per-pair ratios first/second.

    The two runs of a pair are back to back (order alternating), so on a shared,
    busy machine both see the same load; the median of the pair ratios is far steadier
    than a ratio of medians taken minutes apart.
    """
    a, b = [], []
    for index in range(repeats):
        if index % 2 == 0:
            a.append(tokens / timed(first))
            b.append(tokens / timed(second))
        else:
            b.append(tokens / timed(second))
            a.append(tokens / timed(first))
    ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
    return a, b, ratio


def main() -> None:
    parser = common_parser(__doc__)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    results: dict[str, object] = {
        "model": BASE,
        "dtype": "float32",
        "rank": args.rank,
        "targets": "all-linear",
        "users": args.users,
        "torch_threads": torch.get_num_threads(),
    }

    with tempfile.TemporaryDirectory(prefix="adaptkit-bench-") as scratch:
        root = Path(scratch)
        home, registry = scratch_home(root, args.model_cache)
        ours = load_base(BASE, home=home)
        progress("making and publishing adapters")
        users = user_names(args.users)
        staged = make_adapters(ours, root, args.users, args.rank, args.seed)
        versions = publish_users(registry, dict(zip(users, staged, strict=True)))

        results |= measure_ours(args, ours, registry, versions, users, root)
        del ours
        results |= measure_peft(args, load_base(BASE, home=home), versions, users)
        results["repeats"] = args.repeats
        results["new_tokens"] = args.new_tokens

    floors = {
        "activation_ms_p50 <= 1": results["activation_ms_p50"] <= 1.0,
        "cold_load_ms_p50 <= 20": results["cold_load_ms_p50"] <= 20.0,
        "mixed8_vs_single_throughput >= 0.9": results["mixed8_vs_single_throughput"] >= 0.9,
        "merged_vs_base_throughput >= 0.95": results["merged_vs_base_throughput"] >= 0.95,
    }
    results["floors_met"] = floors
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    sys.exit(0 if all(floors.values()) else 1)


def measure_ours(args, ours, registry, versions, users, root: Path) -> dict[str, object]:
    engine = Engine(
        ours, registry, shared_dir=root / "shared", policy=RoutingPolicy(merge_min_new_tokens=None)
    )
    results: dict[str, object] = {}
    results |= measure_cold_load(engine, versions, users)
    results |= measure_ram_tier(engine, users)
    results |= measure_switching(engine, registry, versions, users)
    results |= measure_mixed_batch(engine, args, users)
    results |= measure_merged(engine, args, versions, users)
    engine.close()
    return results


def activate(engine: Engine, version) -> None:
    """Make ``version``'s adapter the one every row uses (loading it if not in RAM)."""
    adapter = engine.bank.load_user(version)
    engine.set_rows([[(adapter, 1.0)]])


def measure_cold_load(engine: Engine, versions, users) -> dict[str, object]:
    bank = engine.bank
    # First sight of a blob: its sha256 is checked (on a second thread, during the parse).
    sample = users[: min(24, len(users))]
    first = [timed(lambda u=user: activate(engine, versions[u])) for user in sample]
    # Evicted, then needed again: read, parse, validate and activate; the sha256 is not
    # recomputed when the file's identity (inode, size, mtime, ctime) is what was verified.
    cold = []
    for user in sample:
        bank.evict(user)
        cold.append(timed(lambda u=user: activate(engine, versions[u])))
    engine.clear_rows()
    results: dict[str, object] = {
        "cold_load_ms_p50": median_ms(cold),
        "cold_load_first_sight_ms_p50": median_ms(first),
        "cold_load_includes": (
            "disk read + parse + finiteness/shape validation + activation; first sight also "
            "verifies the registry sha256"
        ),
    }
    progress(f"cold load p50 {results['cold_load_ms_p50']} ms (first sight {median_ms(first)})")
    return results


def measure_ram_tier(engine: Engine, users) -> dict[str, object]:
    """Every user's adapter in the RAM tier: what one adapter costs there."""
    engine.bank.prefetch(users)
    stats = engine.bank.stats()
    per_adapter = stats.used_bytes / stats.entries
    return {
        "ram_tier_entries": stats.entries,
        "ram_tier_used_bytes": stats.used_bytes,
        "adapter_bytes": int(per_adapter),
        "cached_adapters_per_GiB": int(2**30 // per_adapter),
    }


def measure_switching(engine: Engine, registry, versions, users) -> dict[str, object]:
    """Switching between users whose adapters are all in RAM."""
    bank = engine.bank
    switches, misses = [], bank.stats().misses
    order = [random.choice(users) for _ in range(300)]
    for user in order:
        switches.append(timed(lambda u=user: activate(engine, versions[u])))  # all RAM hits now
    engine.clear_rows()
    assert bank.stats().misses == misses, "a switch missed the RAM tier"
    results: dict[str, object] = {
        "activation_ms_p50": median_ms(switches),
        "registry_lookup_ms_p50": median_ms(
            [timed(lambda u=u: registry.active_version(u)) for u in order[:50]]
        ),
    }
    progress(f"activation p50 {results['activation_ms_p50']} ms")
    return results


def measure_mixed_batch(engine: Engine, args, users) -> dict[str, object]:
    """8 rows of 8 users against 8 rows of one user, tokens/s."""
    tokens = len(PROMPTS) * args.new_tokens
    mixed = [Request(p, user=u) for p, u in zip(PROMPTS, users[:8], strict=True)]
    single = [Request(p, user=users[0]) for p in PROMPTS]

    def run(requests: list[Request]) -> Callable[[], object]:
        return lambda: engine.generate(
            requests, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens
        )

    run(single)()  # warm-up
    mixed_tps, single_tps, ratio = paired(run(mixed), run(single), tokens, args.repeats)
    results: dict[str, object] = {
        "mixed8_tokens_per_s": round(statistics.median(mixed_tps), 2),
        "single8_tokens_per_s": round(statistics.median(single_tps), 2),
        "mixed8_vs_single_throughput": round(ratio, 3),
    }
    progress(f"mixed8 vs single {results['mixed8_vs_single_throughput']}")
    return results


def measure_merged(engine: Engine, args, versions, users) -> dict[str, object]:
    """One user's long stream: steady-state tokens/s with the adapter folded in, and
    unfolded, against the plain base, all one row through the same engine."""
    stream = [Request(PROMPTS[0], user=None)]
    long_tokens = 2 * args.new_tokens  # one row: twice the tokens, still short to run
    adapter = engine.bank.load_user(versions[users[0]])

    def base_run() -> object:
        return engine.generate(stream, max_new_tokens=long_tokens, min_new_tokens=long_tokens)

    stream_user = [Request(PROMPTS[0], user=users[0])]
    fold_s, unfold_s, merged_s, base_s, e2e_s = [], [], [], [], []
    for index in range(args.repeats):
        if index % 2:
            base_s.append(timed(base_run))
        start = time.perf_counter()
        with engine.merged([(adapter, 1.0)]):
            fold_s.append(time.perf_counter() - start)
            merged_s.append(timed(base_run))  # base path, merged weights
            unfolding = time.perf_counter()
        unfold_s.append(time.perf_counter() - unfolding)
        e2e_s.append(time.perf_counter() - start)
        if not index % 2:
            base_s.append(timed(base_run))
    pairs = list(zip(merged_s, base_s, e2e_s, strict=True))
    results: dict[str, object] = {
        "merged_vs_base_throughput": round(statistics.median(b / m for m, b, _ in pairs), 3),
        "merged_with_fold_vs_base_throughput": round(
            statistics.median(b / e for _, b, e in pairs), 3
        ),
        "merge_fold_ms_p50": median_ms(fold_s),
        "merge_unfold_ms_p50": median_ms(unfold_s),
        "merged_includes": (
            f"{long_tokens}-token single-row generation with the adapter folded in, vs the "
            "base; the fold itself (merge_fold_ms_p50) is paid once per stream and is "
            "included only in merged_with_fold_vs_base_throughput"
        ),
    }

    def unmerged_run() -> object:
        return engine.generate(stream_user, max_new_tokens=long_tokens, min_new_tokens=long_tokens)

    _, _, unmerged_ratio = paired(unmerged_run, base_run, long_tokens, args.repeats)
    results["unmerged_vs_base_throughput"] = round(unmerged_ratio, 3)
    progress(f"merged vs base {results['merged_vs_base_throughput']}")
    return results


def measure_peft(args, theirs, versions, users) -> dict[str, object]:
    """The same measurements through PEFT, on its own copy of the base."""
    results: dict[str, object] = {}
    tokens = len(PROMPTS) * args.new_tokens
    names = [f"u{i}" for i in range(8)]
    peft_model = None
    loads = []
    for name, user in zip(names, users[:8], strict=True):
        path = str(versions[user].blob_path)
        if peft_model is None:
            start = time.perf_counter()
            peft_model = PeftModel.from_pretrained(theirs.model, path, adapter_name=name)
            loads.append(time.perf_counter() - start)
        else:
            loads.append(timed(lambda m=peft_model, p=path, n=name: m.load_adapter(p, n)))
    peft_model.eval()
    results["peft_load_adapter_ms_p50"] = median_ms(loads)
    sets = [timed(lambda n=names[i % 8]: peft_model.set_adapter(n)) for i in range(16)]
    results["peft_set_adapter_ms_p50"] = median_ms(sets)
    progress(f"PEFT load {results['peft_load_adapter_ms_p50']} ms, set {median_ms(sets)} ms")

    tokenizer = theirs.tokenizer
    prompts = [encode_prompt(tokenizer, as_messages(p)) for p in PROMPTS]
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    stop = end_of_turn_id(tokenizer)

    def peft_run(adapter_names: list[str] | None) -> Callable[[], object]:
        extra = {"adapter_names": adapter_names} if adapter_names else {}
        return lambda: peft_model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            eos_token_id=[stop],
            pad_token_id=0,
            **extra,
        )

    peft_model.set_adapter(names[0])
    with torch.inference_mode():
        peft_run(None)()
        peft_mixed, peft_single, ratio = paired(
            peft_run(names), peft_run(None), tokens, args.repeats
        )
    results["peft_mixed8_tokens_per_s"] = round(statistics.median(peft_mixed), 2)
    results["peft_single8_tokens_per_s"] = round(statistics.median(peft_single), 2)
    results["peft_mixed8_vs_single_throughput"] = round(ratio, 3)
    return results


if __name__ == "__main__":
    main()

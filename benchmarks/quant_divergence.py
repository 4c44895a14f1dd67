"""Where an int8 base's answers leave fp32's: the prompt-only arena conditions on
variants of the base's numerics, each against fp32 in the same run.

    python benchmarks/quant_divergence.py --json OUT.json [--variants fp32,int8,w8,...]

Per variant, on the bundled suite's base, oracle and memory prompts (150) and its base
probes (24), answered as ``adaptkit arena run`` answers them (the engine, calibrated
first tokens, frequency penalty 0.5, 32 tokens):

* ``success``: per condition, as the arena scores it; ``changed`` / ``flipped``: answers
  that differ from fp32's / that pass or fail the other way;
* ``next_token_agreement``: fp32's answers teacher-forced through the variant, the share
  of positions whose greedy token is fp32's (a smooth measure: one changed token makes
  a whole answer differ).

Variants (every one but ``fp32`` and ``int8`` is a simulation in fp32 kernels):

* ``int8``: the served backend (``adaptkit.quant``: int8 weights, bf16 activations);
* ``w8``: its int8 weights (dequantized) with fp32 activations: the weights' share;
* ``bf16act``: fp32 weights, each linear's input and output rounded to bf16 as the
  kernel rounds them: the activations' share;
* ``ditherN``: int8 weights on the same grid, each rounded up or down at random (seed
  N) instead of to the nearest, with bf16 activations: as plausible an int8 model as
  ``int8``; their spread is how far any int8 base can land from fp32 by chance;
* ``awq``: activation-aware scaling (AWQ) before ``int8``: per input channel of each
  q/k/v, gate/up and down projection, ``s = mean|x|^alpha`` (alpha in 0, 0.25, ..., 1
  per layer group, the one with the least output error on calibration activations from
  the bundled suite's history exchanges), weights multiplied by ``s`` and the input
  divided by it (folded into the preceding RMSNorm / ``up_proj``);
* ``keep_first_last``, ``keep_down``: ``int8`` with layers 0 and 29 / every
  ``down_proj`` kept fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adaptkit.arena.backends import ARENA_REPETITION, KitResponder  # noqa: E402
from adaptkit.arena.conditions import build_prompt, parse_conditions  # noqa: E402
from adaptkit.arena.episodes import load_episodes  # noqa: E402
from adaptkit.arena.evaluators import score  # noqa: E402
from adaptkit.arena.runner import ArenaConfig  # noqa: E402
from adaptkit.arena.session import BUNDLED_SUITE  # noqa: E402
from adaptkit.bank import Calibration  # noqa: E402
from adaptkit.base_model import DEFAULT_BASE, share_converted  # noqa: E402
from adaptkit.home import Home  # noqa: E402
from adaptkit.kit import AdaptKit  # noqa: E402
from adaptkit.prompting import encode_prompt  # noqa: E402
from adaptkit.quant import ACTIVATION_DTYPE, Int8Linear, quantize_int8  # noqa: E402
from adaptkit.retrieval import build_retriever  # noqa: E402
from adaptkit.router import Request  # noqa: E402

CONDITIONS = ("base", "oracle", "memory")
Transform = Callable[[nn.Module, list[torch.Tensor]], None]


# --- the variants -----------------------------------------------------------------


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linears ``quantize_int8`` replaces (all but lm_head)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if type(m) is nn.Linear and not name.endswith("lm_head")
    ]


def _int8_grid(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Int8Linear``'s per-output-channel scale and the weight in its units."""
    scale = Int8Linear(weight, None).scale.float()
    return scale, weight / scale[:, None]


def _round_like_the_kernel(model: nn.Module) -> None:
    for _, m in _linears(model):
        m.register_forward_pre_hook(lambda mod, args: (args[0].to(ACTIVATION_DTYPE).float(),))
        m.register_forward_hook(lambda mod, args, y: y.to(ACTIVATION_DTYPE).float())


def _dequantized(model: nn.Module) -> None:
    with torch.no_grad():
        for _, m in _linears(model):
            m.weight.copy_(Int8Linear.from_linear(m).dequantized_weight())


def _dithered(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in _linears(model):
            scale, units = _int8_grid(m.weight.float())
            low = torch.floor(units)
            up = torch.rand(units.shape, generator=generator) < (units - low)
            m.weight.copy_((low + up.float()).clamp(-127, 127) * scale[:, None])
    _round_like_the_kernel(model)


def _int8_keeping(model: nn.Module, keep: Callable[[str], bool]) -> None:
    for name, m in _linears(model):
        if not keep(name):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, Int8Linear.from_linear(m))


def _layer(name: str) -> int:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1])


def _awq_scale(x: torch.Tensor, weights: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """The alpha (and its scales) whose int8 weights ``W s`` on ``x / s`` (bf16) come
    closest to ``W x`` on the calibration activations ``x``."""
    magnitude = x.abs().mean(0).clamp(min=1e-6)
    exact = [x @ w.T for w in weights]
    best: tuple[float, float, torch.Tensor] | None = None
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        s = magnitude.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        xs = (x / s).to(ACTIVATION_DTYPE).float()
        error = 0.0
        for w, y in zip(weights, exact, strict=True):
            scale, units = _int8_grid(w * s)
            error += ((xs @ (units.round().clamp(-127, 127) * scale[:, None]).T) - y).pow(2).sum()
        if best is None or error < best[0]:
            best = (float(error), alpha, s)
    assert best is not None
    return best[1], best[2]


def _awq(model: nn.Module, calibration: list[torch.Tensor]) -> None:
    inputs: dict[tuple[int, str], list[torch.Tensor]] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for key, m in (
            ("attn", layer.self_attn.q_proj),
            ("mlp", layer.mlp.gate_proj),
            ("down", layer.mlp.down_proj),
        ):

            def keep(mod, args, key=(i, key)):
                inputs.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]))

            hooks.append(m.register_forward_pre_hook(keep))
    with torch.no_grad():
        for ids in calibration:
            model(ids[None])
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            x = {k: torch.cat(inputs[(i, k)]) for k in ("attn", "mlp", "down")}
            _, s = _awq_scale(
                x["attn"], [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
            )
            layer.input_layernorm.weight.div_(s)
            for m in (attn.q_proj, attn.k_proj, attn.v_proj):
                m.weight.mul_(s)
            _, s = _awq_scale(x["mlp"], [mlp.gate_proj.weight, mlp.up_proj.weight])
            layer.post_attention_layernorm.weight.div_(s)
            for m in (mlp.gate_proj, mlp.up_proj):
                m.weight.mul_(s)
            _, s = _awq_scale(x["down"], [mlp.down_proj.weight])
            mlp.up_proj.weight.div_(s[:, None])
            mlp.down_proj.weight.mul_(s)
    quantize_int8(model)


VARIANTS: dict[str, Transform] = {
    "fp32": lambda model, cal: None,
    "int8": lambda model, cal: quantize_int8(model),
    "w8": lambda model, cal: _dequantized(model),
    "bf16act": lambda model, cal: _round_like_the_kernel(model),
    "awq": _awq,
    "keep_first_last": lambda model, cal: _int8_keeping(model, lambda n: _layer(n) in (0, 29)),
    "keep_down": lambda model, cal: _int8_keeping(model, lambda n: n.endswith("down_proj")),
    **{f"dither{k}": (lambda model, cal, k=k: _dithered(model, k)) for k in range(1, 10)},
}


# --- the prompts and the measurements ----------------------------------------------


def prompts(suite) -> list[tuple[str, object, list[dict[str, str]]]]:
    """(condition, task, messages) as the arena builds them, then the base probes."""
    config = ArenaConfig()
    retriever = build_retriever("bm25")
    rows = []
    for condition in parse_conditions(",".join(CONDITIONS)):
        for user in suite.users:
            history = suite.history.get(user, ())
            for task in suite.deployment.get(user, ()):
                if not task.eval.skip_reason:
                    messages = build_prompt(condition, task, history, retriever, config.memory_k)
                    rows.append((condition.name, task, messages))
    for task in suite.probes:
        if not task.eval.skip_reason:
            rows.append(("probe", task, [{"role": "user", "content": task.intent}]))
    return rows


def calibration_ids(suite, tokenizer, tokens: int = 768) -> list[torch.Tensor]:
    """The bundled suite's history exchanges (what its users taught), up to ``tokens``."""
    ids, total = [], 0
    for records in suite.history.values():
        for record in records:
            messages = [
                {"role": "user", "content": record.interaction.messages[-1].content},
                {"role": "assistant", "content": record.interaction.sft_target or ""},
            ]
            encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
            row = torch.tensor(encoded["input_ids"])
            ids.append(row)
            total += len(row)
            if total >= tokens:
                return ids
    return ids


def forced_greedy(model, tokenizer, rows, answers: list[str]) -> list[list[int]]:
    """fp32's answers teacher-forced through ``model``: its greedy token at each answer
    position (decoding's calibration and penalty left out: the model's own choice)."""
    greedy = []
    with torch.no_grad():
        for (_, _, messages), answer in zip(rows, answers, strict=True):
            prompt = encode_prompt(tokenizer, messages)
            target = tokenizer(answer, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([prompt + target])).logits[0]
            greedy.append(logits[len(prompt) - 1 : -1].argmax(-1).tolist())
    return greedy


def run_variant(
    name: str, suite, rows, reference: dict | None, work: Path, previous: dict | None
) -> dict:
    """One variant's answers and scores (or ``previous``'s, when given) and its greedy
    tokens along fp32's answers."""
    home = Home(work / name).ensure()
    share_converted(DEFAULT_BASE, home, Home.resolve(None))
    kit = AdaptKit(home.root)
    started = time.perf_counter()
    model, tokenizer = kit.base.model, kit.base.tokenizer
    VARIANTS[name](model, calibration_ids(suite, tokenizer))
    result = previous if previous is not None else answer_and_score(kit, rows, reference)
    fp32_answers = (reference or result)["answers"]
    result["forced_greedy"] = forced_greedy(model, tokenizer, rows, fp32_answers)
    if reference is not None:
        pairs = [
            (a, b)
            for mine, fp32 in zip(result["forced_greedy"], reference["forced_greedy"], strict=True)
            for a, b in zip(mine, fp32, strict=True)
        ]
        result["next_token_agreement"] = sum(a == b for a, b in pairs) / max(len(pairs), 1)
    result["seconds"] = time.perf_counter() - started
    kit.close()
    return result


def answer_and_score(kit: AdaptKit, rows, reference: dict | None) -> dict:
    """Every row answered as the arena answers (engine, calibration, penalty), scored."""
    tokenizer = kit.base.tokenizer
    responder = KitResponder(kit, calibration=Calibration(), repetition=ARENA_REPETITION)
    batch = ArenaConfig().answer_batch
    order = sorted(range(len(rows)), key=lambda i: len(encode_prompt(tokenizer, rows[i][2])))
    answers = [""] * len(rows)
    for start in range(0, len(order), batch):
        picked = order[start : start + batch]
        texts = responder.answer(
            [Request(rows[i][2]) for i in picked], max_new_tokens=ArenaConfig().max_new_tokens
        )
        for i, text in zip(picked, texts, strict=True):
            answers[i] = text
    passed = [
        score(answer, task.eval, intent=task.intent).passed
        for (_, task, _), answer in zip(rows, answers, strict=True)
    ]
    result: dict = {"answers": answers, "passed": passed, "per_condition": {}}
    for condition in (*CONDITIONS, "probe"):
        index = [i for i, row in enumerate(rows) if row[0] == condition]
        entry = {"n": len(index), "success": sum(passed[i] for i in index) / len(index)}
        if reference is not None:
            entry["changed"] = sum(answers[i] != reference["answers"][i] for i in index)
            entry["flipped"] = sum(passed[i] != reference["passed"][i] for i in index)
            entry["success_minus_fp32"] = (
                entry["success"] - reference["per_condition"][condition]["success"]
            )
        result["per_condition"][condition] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--variants",
        default="fp32,int8,w8,bf16act,awq,dither1,dither2,dither3,dither4,dither5",
        help=f"comma list, fp32 first; from {', '.join(VARIANTS)}",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="a previous --json: its variants' answers are kept, only the teacher-forced "
        "agreement is measured again",
    )
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or names[0] != "fp32":
        parser.error(
            f"--variants: fp32 first, then any of {', '.join(VARIANTS)}; got {unknown or names}"
        )
    torch.set_num_threads(args.threads)
    suite = load_episodes(BUNDLED_SUITE)
    rows = prompts(suite)
    work = Path(tempfile.mkdtemp(prefix="quant-divergence-"))
    reused = json.loads(args.reuse.read_text())["variants"] if args.reuse else {}
    results: dict[str, dict] = {}
    for name in names:
        results[name] = run_variant(name, suite, rows, results.get("fp32"), work, reused.get(name))
        summary = {
            k: v
            for k, v in results[name].items()
            if k not in ("answers", "passed", "forced_greedy")
        }
        print(name, json.dumps(summary), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "suite": "bundled (adaptkit/arena/data/starter_suite.jsonl)",
                    "rows": [{"condition": c, "task_id": str(t.task_id)} for c, t, _ in rows],
                    # Greedy tokens along fp32's answers: measured again, not kept.
                    "variants": {
                        variant: {k: v for k, v in result.items() if k != "forced_greedy"}
                        for variant, result in results.items()
                    },
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()

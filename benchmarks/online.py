"""Online learning benchmark: 20 rounds of feedback from a user who always cycles.

    python benchmarks/online.py --json OUT.json      # also writes OUT.png next to it

Two conditions on the packaged SmolLM2-135M-Instruct, same stream, same seeds:

* ``anchored``: the OnlineTrainer defaults (replay + KL to the base on general prompts,
  the gate with probe retention >= 0.95 and held-back interactions);
* ``plain_sft``: SFT on each batch alone: no replay, no anchor, no gate (every version
  is promoted) -- the setting in which repeated internalization is reported to collapse.

Per round, 4 feedback events (edits of car answers into bicycle answers, accepts and
thumbs-up of bicycle answers) are recorded and one update runs. Measured:

* ``update_latency_s_p50``: from recording the batch of 4 events to the new version
  being the user's active one in the registry (which the next request resolves);
* ``user_success``: share of 10 held-back travel requests whose greedy answer mentions
  cycling (bicycle|bike|cycl), after round 0 (the base) and every --eval-every rounds;
* ``retention``: greedy probe answers (string checks) kept, relative to the base, on
  the probes the base answers with a clear margin (``ProbeSuite``: a probe decided by
  a near-tie flips under any change and measures noise); ``retention_all`` is the
  same on every probe the base gets right, near-ties included, reported next to it.
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

from adaptkit.base_model import DEFAULT_BASE, QUANT_CHOICES, backend_of, load_base  # noqa: E402
from adaptkit.errors import UnknownUserError  # noqa: E402
from adaptkit.feedback import FeedbackEvent  # noqa: E402
from adaptkit.gate import Gate, GateConfig, ProbeSuite  # noqa: E402
from adaptkit.home import Home  # noqa: E402
from adaptkit.learning import LoraSpec  # noqa: E402
from adaptkit.online import OnlineConfig, OnlineTrainer  # noqa: E402
from adaptkit.prompting import as_messages, generate  # noqa: E402
from adaptkit.registry import Registry  # noqa: E402

PLACES = [
    "library",
    "dentist",
    "office",
    "train station",
    "farmers market",
    "museum",
    "gym",
    "bakery",
    "post office",
    "park",
    "cinema",
    "pharmacy",
    "bank",
    "school",
    "hospital",
    "town hall",
    "swimming pool",
    "bookshop",
    "hardware store",
    "community garden",
]
HELD_BACK = [
    "How long does it take me to get to the airport?",
    "What is the best way for me to get to the zoo?",
    "How should I get to my friend's house across town?",
    "How do I get to the concert hall tonight?",
    "How long is my trip to the beach?",
    "What's the quickest way to the stadium for me?",
    "How do I get to the university campus?",
    "How long will it take me to reach the shopping mall?",
    "How should I travel to the art gallery?",
    "How do I get to the city centre from home?",
]
CYCLING = "bicycle |OR| bike |OR| cycl"


def stream(rounds: int, per_round: int) -> list[dict]:
    """Feedback records: (prompt, served response, kind, edit text)."""
    records = []
    for i in range(rounds * per_round):
        place = PLACES[i % len(PLACES)]
        minutes = 8 + (i * 7) % 25
        prompt = [
            f"How long will it take me to get to the {place}?",
            f"How do I get to the {place}?",
            f"What's the best way for me to go to the {place}?",
        ][i % 3]
        bike = f"By bicycle from Lexington it takes about {minutes} minutes; there is a bike rack."
        car = f"By car it takes about {minutes // 2 + 3} minutes."
        kind = ("edit", "accept", "edit", "up")[i % 4]
        served = car if kind == "edit" else bike
        records.append({"prompt": prompt, "response": served, "kind": kind, "text": bike})
    return records


def passes(answer: str) -> bool:
    text = answer.lower()
    return any(alt.strip() in text for alt in CYCLING.split(" |OR| "))


def evaluate(trainer: OnlineTrainer, user: str, probes: ProbeSuite) -> dict[str, float]:
    """Greedy answers with the user's active version (a zero adapter when it has none)."""
    try:
        active = trainer.registry.active_version(user)
    except UnknownUserError:
        active = None
    if active is None:
        trainer.slot.reset()  # no feedback yet: a fresh adapter (B = 0) is the base model
    else:
        trainer.slot.load(active, trainer.registry.read_weights(active))
    model, tokenizer = trainer.slot.model, trainer.base.tokenizer
    answers = generate(model, tokenizer, [as_messages(p) for p in HELD_BACK], max_new_tokens=24)
    return {
        "user_success": sum(map(passes, answers)) / len(answers),
        # Greedy probe answers, on the probes the base answers with a clear margin ...
        "retention": probes.retention(trainer.slot),
        # ... and on every probe, near-ties included (reported, not gated).
        "probe_accuracy_all": probes.generation_accuracy(model, tokenizer),
        "example": answers[0],
    }


def run_condition(name: str, config: OnlineConfig, gate: GateConfig, base, args) -> dict:
    """One condition from start to end; returns its summary."""
    rounds = condition_rounds(name, config, gate, base, args)
    while True:
        try:
            next(rounds)
        except StopIteration as done:
            return done.value


def condition_rounds(name: str, config: OnlineConfig, gate: GateConfig, base, args):
    """One condition as a generator that yields after each update round and returns
    the summary, so that two bases' runs can alternate round by round (``--quant``)."""
    root = Path(tempfile.mkdtemp(prefix=f"online-{name}-"))
    home = Home(root).ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    probes = ProbeSuite()
    trainer = OnlineTrainer(
        registry,
        base,
        base_name=DEFAULT_BASE,
        config=config,
        lora=args.lora,
        gate=Gate(probes, gate),
    )
    user = "alice"
    records = stream(args.rounds, 4)
    curve = {"round": [], "user_success": [], "retention": [], "retention_all": [], "examples": []}
    base_eval = evaluate(trainer, user, probes)
    base_accuracy = base_eval["probe_accuracy_all"]

    def point(round_number: int, result: dict) -> None:
        curve["round"].append(round_number)
        curve["user_success"].append(result["user_success"])
        curve["retention"].append(result["retention"])
        curve["retention_all"].append(result["probe_accuracy_all"] / max(base_accuracy, 1e-9))
        curve["examples"].append(result["example"])
        print(
            f"[{name}] round {round_number:2d}: success {result['user_success']:.2f} "
            f"retention {curve['retention'][-1]:.2f} (all probes "
            f"{curve['retention_all'][-1]:.2f})  e.g. {result['example'][:70]!r}",
            flush=True,
        )

    point(0, base_eval)
    latencies, promoted_latencies, timings, reasons = [], [], [], []
    for round_number in range(1, args.rounds + 1):
        batch = records[(round_number - 1) * 4 : round_number * 4]
        started = time.perf_counter()
        for record in batch:
            request = trainer.log.record_completion(user, record["prompt"], record["response"])
            text = record["text"] if record["kind"] == "edit" else None
            trainer.log.record(FeedbackEvent(user, record["kind"], request.id, text=text))
        result = trainer.update(user)
        elapsed = time.perf_counter() - started
        latencies.append(elapsed)
        if result.promoted:
            promoted_latencies.append(elapsed)
        timings.append(result.timings)
        reasons.append(result.gate.reason if result.gate else (result.error or "no update"))
        phases = " ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
        print(f"[{name}] update {round_number:2d}: {elapsed:.2f} s ({phases}) {reasons[-1]}")
        if round_number in args.eval_rounds:
            point(round_number, evaluate(trainer, user, probes))
            # Partial results survive an interrupted run.
            partial = args.json.with_suffix(f".{name}.partial.json")
            partial.write_text(
                json.dumps(
                    {
                        "curve": curve,
                        "latencies": latencies,
                        "timings": timings,
                        "reasons": reasons,
                    },
                    indent=2,
                )
            )
        yield round_number
    trainer.close()  # the base model is shared with the next condition
    probe_counts = {"gated": len(probes.prepared), "near_tie_left_out": len(probes.fragile)}
    return summarize(
        {
            "curve": curve,
            "latencies": latencies,
            "timings": timings,
            "reasons": reasons,
            "probes": probe_counts,
        }
    )


def summarize(raw: dict) -> dict:
    """Medians and counts of one condition's per-round records."""
    latencies, timings, reasons = raw["latencies"], raw["timings"], raw["reasons"]
    promoted = [t for t, r in zip(latencies, reasons, strict=True) if r.startswith("promoted")]
    return {
        "curve": raw["curve"],
        "latency_s_p50": statistics.median(latencies),
        "latency_promoted_s_p50": statistics.median(promoted) if promoted else None,
        "phase_s_p50": {k: statistics.median(t.get(k, 0.0) for t in timings) for k in timings[0]},
        "promoted": len(promoted),
        "probes": raw.get("probes"),
        "gate_reasons": reasons,
    }


def at_round(result: dict, key: str, round_number: int) -> float | None:
    """The curve's value after ``round_number`` updates; None if the run stopped earlier."""
    curve = result["curve"]
    return (
        curve[key][curve["round"].index(round_number)] if round_number in curve["round"] else None
    )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, result in results.items():
        curve = result["curve"]
        left.plot(curve["round"], curve["user_success"], marker="o", label=name)
        (line,) = right.plot(curve["round"], curve["retention"], marker="o", label=name)
        right.plot(
            curve["round"],
            curve["retention_all"],
            linestyle=":",
            color=line.get_color(),
            label=f"{name} (all probes)",
        )
    left.set(title="user success on held-back requests", xlabel="update round", ylim=(-0.05, 1.05))
    right.set(title="probe retention vs base", xlabel="update round", ylim=(0, 1.3))
    right.axhline(0.95, color="grey", linestyle="--", linewidth=1, label="floor 0.95")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="write results here (+ .png)")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="home whose models/ holds (or can convert) the base model",
    )
    parser.add_argument("--base", default=DEFAULT_BASE)
    parser.add_argument(
        "--quant",
        default="none",
        help=f"base quantization, one of {', '.join(QUANT_CHOICES)}; a comma list "
        "(none,int8) runs every base with their update rounds alternating and reports "
        "the latency ratios",
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--conditions", default="anchored,plain_sft")
    parser.add_argument("--eval-every", type=int, default=5, help="rounds between evaluations")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default; 1 on a box shared with others)",
    )
    parser.add_argument(
        "--targets",
        default=None,
        help="adapter modules, e.g. q_proj,v_proj or all-linear "
        "[default: the online trainer's shape, MLPs of the top 40%% of the layers]",
    )
    parser.add_argument(
        "--top-layers", type=int, default=0, help="with --targets: adapt the last N layers only"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="run nothing: combine the OUT.<condition>.partial.json files "
        "of runs made with --conditions (e.g. one condition per process)",
    )
    args = parser.parse_args()
    args.lora = LoraSpec(targets=args.targets, top_layers=args.top_layers) if args.targets else None
    args.quant = args.quant.split(",")
    for quant in args.quant:
        if quant not in QUANT_CHOICES:
            parser.error(f"--quant {quant!r} is not one of {', '.join(QUANT_CHOICES)}")
    if args.merge and len(args.quant) > 1:
        parser.error("--merge combines one base's partial files: give one --quant")
    args.eval_rounds = set(range(args.eval_every, args.rounds + 1, args.eval_every)) | {args.rounds}
    return args


CONDITIONS = {
    "anchored": (OnlineConfig(), GateConfig()),
    "plain_sft": (
        OnlineConfig(replay=0, anchor_prompts=0, kl_weight=0.0, holdout_every=0),
        GateConfig(min_retention=0.0, user_tolerance=float("inf")),
    ),
}


def run_conditions(args: argparse.Namespace) -> dict[str, dict]:
    """Each condition of ``--conditions`` run on one copy of the base model."""
    model_home = Home(args.home or Path(tempfile.mkdtemp(prefix="online-models-"))).ensure()
    base = load_base(args.base, home=model_home, quant=args.quant[0])
    results = {}
    for name in args.conditions.split(","):
        config, gate = CONDITIONS[name]
        label = condition_label(name, args.quant[0])
        results[name] = run_condition(label, config, gate, base, args)
    return results


def run_paired(args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    """Each condition on every base of ``--quant``, the bases' update rounds alternating
    (fp32 round 1, int8 round 1, fp32 round 2, ...): both see the same machine load, so
    their latencies compare. Returns {quant: {condition: summary}}."""
    model_home = Home(args.home or Path(tempfile.mkdtemp(prefix="online-models-"))).ensure()
    bases = {quant: load_base(args.base, home=model_home, quant=quant) for quant in args.quant}
    results: dict[str, dict[str, dict]] = {quant: {} for quant in args.quant}
    for name in args.conditions.split(","):
        config, gate = CONDITIONS[name]
        runs = {
            quant: condition_rounds(condition_label(name, quant), config, gate, base, args)
            for quant, base in bases.items()
        }
        while runs:
            for quant, rounds in list(runs.items()):
                try:
                    next(rounds)
                except StopIteration as done:
                    results[quant][name] = done.value
                    del runs[quant]
    return results


def condition_label(name: str, quant: str) -> str:
    """A condition's name in logs and partial files: ``anchored``, ``anchored-int8``."""
    return name if quant == "none" else f"{name}-{quant}"


def merge_partial(args: argparse.Namespace) -> dict[str, dict]:
    """The conditions' summaries from the partial files of earlier runs."""
    return {
        name: summarize(json.loads(args.json.with_suffix(f".{label}.partial.json").read_text()))
        for name in args.conditions.split(",")
        for label in [condition_label(name, args.quant[0])]
    }


def report(
    args: argparse.Namespace, results: dict[str, dict], started: float, quant: str = "none"
) -> dict:
    """The JSON written: the anchored condition's headline numbers, then every condition."""
    anchored = results.get("anchored", next(iter(results.values())))
    output = {
        "model": args.base,
        "quant": quant,
        "backend": backend_of(quant),
        "rounds": args.rounds,
        "events_per_round": 4,
        "adapter": {"targets": args.targets or "online_lora", "top_layers": args.top_layers},
        "threads": torch.get_num_threads(),
        "update_latency_s_p50": anchored["latency_s_p50"],
        "retention_after_20_updates": at_round(anchored, "retention", 20),
        "retention_all_probes_after_20_updates": at_round(anchored, "retention_all", 20),
        "probes": anchored.get("probes"),
        "user_success_after_20_updates": at_round(anchored, "user_success", 20),
        "last_evaluated_round": anchored["curve"]["round"][-1],
        "user_success_curve": {
            "round": anchored["curve"]["round"],
            "success": anchored["curve"]["user_success"],
        },
        "conditions": results,
        "wall_seconds": time.perf_counter() - started,
    }
    if "plain_sft" in results:
        output["plain_sft_retention_after_20_updates"] = at_round(
            results["plain_sft"], "retention", 20
        )
        output["plain_sft_user_success_after_20_updates"] = at_round(
            results["plain_sft"], "user_success", 20
        )
    return output


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if len(args.quant) > 1:
        by_quant = run_paired(args)
        output = paired_report(args, by_quant, started)
        plot(
            {
                condition_label(name, quant): result
                for quant, results in by_quant.items()
                for name, result in results.items()
            },
            args.json.with_suffix(".png"),
        )
    else:
        results = merge_partial(args) if args.merge else run_conditions(args)
        output = report(args, results, started, args.quant[0])
        plot(results, args.json.with_suffix(".png"))
    args.json.write_text(json.dumps(output, indent=2))
    print(json.dumps(headline(output), indent=2))


def paired_report(args: argparse.Namespace, by_quant: dict[str, dict], started: float) -> dict:
    """Every base's report, then per condition each base's update latency p50 over the
    first base's (``--quant none,int8``: int8 over fp32)."""
    reports = {quant: report(args, results, started, quant) for quant, results in by_quant.items()}
    reference, *others = args.quant
    ratios = {
        name: {
            quant: by_quant[quant][name]["latency_s_p50"]
            / by_quant[reference][name]["latency_s_p50"]
            for quant in others
        }
        for name in args.conditions.split(",")
    }
    return {
        "paired": f"update rounds alternate between the bases {', '.join(args.quant)}",
        "latency_p50_ratio_over_" + reference: ratios,
        "bases": reports,
        "wall_seconds": time.perf_counter() - started,
    }


def headline(output: dict) -> dict:
    """The printed summary: the JSON without the per-condition detail."""
    if "bases" in output:
        return {**output, "bases": {q: headline(r) for q, r in output["bases"].items()}}
    return {k: v for k, v in output.items() if k != "conditions"}


if __name__ == "__main__":
    main()

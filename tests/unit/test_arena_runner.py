"""The runner and its metrics, through the Protocol seams: scripted fakes pin every number
exactly; the tiny random model runs the real path (AdaptKit.train + registry + the bank's Engine)
end to end through the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptkit.arena import (
    BUNDLED_SUITE,
    ArenaConfig,
    ArenaOptions,
    ArenaRunner,
    BM25Retriever,
    Learned,
    load_episodes,
)
from adaptkit.arena.backends import ARENA_REPETITION, ARENA_TRAIN, StepPolicy
from adaptkit.arena.metrics import loops, summarize
from adaptkit.arena.report import portable_path, run_path, write_report
from adaptkit.arena.runner import MAX_LENGTH_SPREAD, curve_points, length_batches
from adaptkit.bank import Repetition
from adaptkit.cli.main import main
from adaptkit.errors import InputError
from adaptkit.router import Request

VALUES = {"alice": "bicycle", "bob": "scooter"}


def _suite(tmp_path: Path) -> Path:
    records = []
    task_id = 0
    for user, value in VALUES.items():
        other = next(v for u, v in VALUES.items() if u != user)
        for index in range(5):
            task_id += 1
            records.append(
                {
                    "task_id": task_id,
                    "user_id": user,
                    "split": "history",
                    "intent": f"Trip {index}?",
                    "response": f"Go by {value}.",
                }
            )
        for index in range(2):
            task_id += 1
            records.append(
                {
                    "task_id": task_id,
                    "split": "deployment",
                    "intent": f"{user}: Route to place {index}?",
                    "oracle_intent": f"I use a {value}. Route to place {index}?",
                    "eval": {
                        "eval_types": ["string_match"],
                        "reference_answers": {"must_include": [value], "must_exclude": [other]},
                    },
                }
            )
    records.append(
        {
            "task_id": 99,
            "split": "probe",
            "intent": "Capital of France?",
            "eval": {
                "eval_types": ["string_match"],
                "reference_answers": {"must_include": ["Paris"]},
            },
        }
    )
    records.append(
        {
            "task_id": 100,
            "user_id": "bob",
            "intent": "Save it to my wishlist",
            "eval": {"eval_types": ["program_html"], "reference_answers": None},
        }
    )
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    return path


class ScriptedLearner:
    """Learns a user's value only after `needs` records; each version it publishes says
    what it was taught then (a leaky one: the last other user's value it saw)."""

    method = "scripted"

    def __init__(self, needs: int = 2, leaky: bool = False) -> None:
        self.needs, self.leaky = needs, leaky
        self.knows: dict[str, str | None] = {}
        self.says: dict[int, str | None] = {}  # version -> the value its answers name
        self.calls: list[tuple[str, int]] = []

    def learn(self, user: str, history: Sequence) -> Learned:
        self.calls.append((user, len(history)))
        self.knows[user] = VALUES[user] if len(history) >= self.needs else None
        version = len(self.calls)
        others = [v for u, v in self.knows.items() if u != user and v]
        self.says[version] = others[-1] if self.leaky and others else self.knows[user]
        return Learned(user, version, 1.5, 1000, len(history))


class ScriptedResponder:
    """Base model knows nothing; oracle/memory copy what the prompt says; each adapter
    version says what its learner taught it. Records every batch it was asked."""

    def __init__(self, learner: ScriptedLearner) -> None:
        self.learner = learner
        self.batches: list[list[Request]] = []

    def answer(self, requests: Sequence[Request], *, max_new_tokens: int) -> list[str]:
        self.batches.append(list(requests))
        out = []
        for request in requests:
            text = " ".join(m["content"] for m in request.prompt)
            if "France" in text:
                out.append("Paris." if request.user in (None, "alice") else "No idea.")
            elif request.user is None:
                copied = [v for v in VALUES.values() if v in text]
                out.append(f"Use a {copied[0]}." if copied else "Walk, walk, walk, I guess.")
            else:
                out.append(f"By {self.learner.says[request.version]}.")
        return out

    def prompt_tokens(self, prompt) -> int:
        return sum(len(m["content"].split()) for m in prompt)


def _run(
    tmp_path: Path, learner: ScriptedLearner, responder: ScriptedResponder | None = None, **config
) -> dict:
    suite = load_episodes(_suite(tmp_path))
    responder = responder or ScriptedResponder(learner)
    runner = ArenaRunner(responder, learner, BM25Retriever(), ArenaConfig(**config), progress=False)
    return summarize(runner.run(suite), {"episodes": "suite", "model": "fake"})


def test_every_number_from_scripted_backends(tmp_path: Path) -> None:
    learner = ScriptedLearner(needs=2)
    report = _run(tmp_path, learner)
    conditions = report["conditions"]
    assert conditions["base"]["success"] == 0.0
    assert conditions["oracle"]["success"] == 1.0
    assert conditions["memory"]["success"] == 1.0  # retrieval put the value in the prompt
    assert conditions["adapter"]["success"] == 1.0
    assert conditions["adapter"]["per_user"] == {"alice": 1.0, "bob": 1.0}
    assert conditions["adapter"]["fraction_of_oracle"] == 1.0
    assert conditions["base"]["looping"] == 1.0 and conditions["adapter"]["looping"] == 0.0
    # streamed in order: 1, 2 (doubling while k <= n/2), then all 5 records, per user
    assert learner.calls == [("alice", 1), ("alice", 2), ("alice", 5),
                             ("bob", 1), ("bob", 2), ("bob", 5)]  # fmt: skip
    curve = report["learning_curve"]
    assert curve["points"] == ["0", "1", "2", "all"]
    assert [curve["success"][k] for k in curve["points"]] == [0.0, 0.0, 1.0, 1.0]
    # bob's adapter forgot France, alice's did not: 1 of 2 users x 1 probe
    assert report["retention"]["retention"] == 0.5
    assert report["retention"]["per_user"] == {"alice": 1.0, "bob": 0.0}
    assert report["leakage"]["rate"] == 0.0 and report["leakage"]["eligible"] == 4
    assert report["skipped"][0]["task_id"] == "100"
    assert "program_html" in report["skipped"][0]["reason"]
    assert report["cost"]["train_seconds_per_user"] == {"alice": 1.5, "bob": 1.5}
    assert (
        report["cost"]["prompt_tokens_mean"]["memory"]
        > report["cost"]["prompt_tokens_mean"]["base"]
    )
    # The user's results only: floors for the bundled suite live in benchmarks/.
    assert "targets" not in report


def test_every_version_is_answered_in_few_batches_sorted_by_length(tmp_path: Path) -> None:
    learner = ScriptedLearner(needs=2)
    responder = ScriptedResponder(learner)
    report = _run(tmp_path, learner, responder, answer_batch=8)
    rows = [request for batch in responder.batches for request in batch]
    # 3 prompt-only conditions x 4 tasks + 1 base probe; per user 2 curve points x 2
    # tasks, then adapter + adapter+memory (2 x 2), 1 probe and 2 leakage tasks
    assert len(rows) == 13 + 2 * (4 + 4 + 1 + 2)
    sizes = [len(batch) for batch in responder.batches]
    assert max(sizes) == 8 and len(sizes) < len(rows) / 4
    for batch in responder.batches:  # no short prompt is padded to a much longer one
        lengths = [responder.prompt_tokens(list(r.prompt)) for r in batch]
        assert max(lengths) <= MAX_LENGTH_SPREAD * lengths[0]
    # base rows first; every adapter row pins the version that learned it
    users = [r.user for r in rows]
    assert users.index("alice") > max(i for i, u in enumerate(users) if u is None)
    assert {(r.user, r.version) for r in rows if r.user} == {
        ("alice", 1), ("alice", 2), ("alice", 3), ("bob", 4), ("bob", 5), ("bob", 6),
    }  # fmt: skip
    # a batch can hold several versions of one user and several users
    assert any(len({(r.user, r.version) for r in b if r.user}) > 2 for b in responder.batches)
    tokens = [responder.prompt_tokens(list(r.prompt)) for r in rows if r.user]
    assert tokens == sorted(tokens)
    # batching changed nothing: k = 1 knows nothing yet, k = 2 and the final one do
    assert report["learning_curve"]["success"] == {"0": 0.0, "1": 0.0, "2": 1.0, "all": 1.0}


def test_batches_are_cut_at_the_size_where_prompts_grow_too_long_and_between_groups() -> None:
    tokens = [40, 41, 42, 43, 150, 151, 152, 38]
    order = sorted(range(len(tokens)), key=tokens.__getitem__)
    assert length_batches(order, tokens, 3) == [[7, 0, 1], [2, 3], [4, 5, 6]]
    assert length_batches(order, tokens, 8, spread=10.0) == [order]
    assert length_batches([], tokens, 3) == []
    # two groups, each sorted on its own: base rows of 150-152 tokens, then adapter
    # rows of 38 and 40. The second group's first row starts a batch, though 38 is
    # within the spread of 150.
    assert length_batches([4, 5, 6, 7, 0], tokens, 8) == [[4, 5, 6], [7, 0]]


def test_a_leaky_adapter_is_caught_by_leakage_and_must_exclude(tmp_path: Path) -> None:
    report = _run(tmp_path, ScriptedLearner(needs=1, leaky=True), curve_points=())
    leakage = report["leakage"]
    # bob's adapter (trained after alice's) answers alice's 2 requests with her value;
    # alice's adapter answers bob's 2 requests with hers, which is wrong for bob
    assert leakage["eligible"] == 4 and leakage["leaked"] == 2 and leakage["rate"] == 0.5
    leaked = [p for p in leakage["pairs"] if p["leaked"]]
    assert {(p["task_user"], p["adapter_user"]) for p in leaked} == {("alice", "bob")}
    # bob's own answers carry alice's value, which his tasks exclude
    assert report["conditions"]["adapter"]["must_exclude_hits"] == 0.5
    assert report["learning_curve"]["points"] == ["0", "all"]


def test_curve_points_and_step_policy() -> None:
    assert curve_points(8, None) == [0, 1, 2, 4, 8]
    assert curve_points(10, None) == [0, 1, 2, 4, 10]
    assert curve_points(16, None) == [0, 1, 2, 4, 8, 16]
    assert curve_points(9, (2, 20)) == [0, 2, 9]
    assert curve_points(0, None) == [0]
    policy = StepPolicy(epochs=12, min_steps=6, max_steps=24)
    assert StepPolicy.for_budget(2).steps(8, 4) == 2
    assert [policy.steps(k, 4) for k in (1, 2, 4, 8, 10)] == [12, 12, 12, 24, 24]
    assert StepPolicy(epochs=2, min_steps=6, max_steps=24).steps(1, 4) == 6


def test_an_answer_loops_when_a_run_of_words_repeats_three_times_back_to_back() -> None:
    assert loops("No, no, no, no, no")
    assert loops("The navy, navy, navy coat")
    assert loops("Take the bus. The bus, the bus, the bus.")
    assert loops("I like it a lot i like it a lot I LIKE IT A LOT")
    assert not loops("No, no. Take the bus to the bus station.")
    assert not loops("a b c d e f g a b c d e f g a b c d e f g")  # 7 words: over the run limit
    assert not loops("Go by bus, by bus if it rains.")  # twice is no loop
    assert not loops("")


def test_report_files_from_scripted_run(tmp_path: Path) -> None:
    report = _run(tmp_path, ScriptedLearner())
    out = tmp_path / "out"
    calibration = {"tokens": 3, "strength": 0.5, "plausibility": 0.3, "null_request": "N/A"}
    report["run"].update(
        method="scripted",
        retriever="bm25",
        calibration=calibration,
        episodes=str(BUNDLED_SUITE),
        home=str(out / "home"),
    )
    paths = write_report(report, out)
    written = json.loads(paths["json"].read_text())
    assert written["conditions"]["adapter"]["success"] == 1.0
    # No machine path: the run's home relative to the report, the bundled suite by package.
    assert written["run"]["home"] == "home"
    assert written["run"]["episodes"] == "adaptkit/arena/data/starter_suite.jsonl"
    assert report["run"]["home"] == str(out / "home")  # the caller's summary is untouched
    text = paths["markdown"].read_text()
    assert "| adapter | 1.000 |" in text and "| leakage" in text
    assert "first 3 tokens calibrated (strength 0.5, plausibility 0.3)" in text
    assert "| looping |" in text and "| base | 0.000 | 0.000 | 4 |" in text
    assert "target" not in text.lower()
    report["run"]["calibration"] = {**calibration, "tokens": 0}
    assert "decoding greedy ·" in write_report(report, out)["markdown"].read_text()
    report["run"]["repetition"] = asdict(Repetition(repetition_penalty=1.2))
    text = write_report(report, out)["markdown"].read_text()
    assert "decoding greedy, repetition_penalty 1.2 ·" in text
    for key in ("curve", "conditions"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"


def test_report_paths_name_nothing_of_the_machine(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert portable_path("suites/mine.jsonl", out) == "suites/mine.jsonl"  # as given
    assert portable_path(str(out / "home"), out) == "home"
    assert portable_path(str(Path.home() / "suites" / "a.jsonl"), out) == "~/suites/a.jsonl"
    elsewhere = tmp_path / "elsewhere.jsonl"
    if not elsewhere.resolve().is_relative_to(Path.home().resolve()):
        assert portable_path(str(elsewhere), out) == str(elsewhere)  # a user's own choice
    # ... and a tool reading the report finds them again.
    (out / "home").mkdir(parents=True)
    assert run_path("home", out) == out / "home"
    bundled = portable_path(str(BUNDLED_SUITE), out)
    assert run_path(bundled, out).resolve() == BUNDLED_SUITE.resolve()
    assert run_path("~/a.jsonl", out) == Path.home() / "a.jsonl"


def test_cli_end_to_end_on_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "arena",
            "run",
            "--episodes",
            str(_suite(tmp_path)),
            "--out",
            str(out),
            "--base",
            str(tiny_model_dir),
            "--steps",
            "2",
            "--max-new-tokens",
            "4",
            "--curve-points",
            "1",
            "--retriever",
            "bm25",
            "--rank",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "report.md" in result.output
    report = json.loads((out / "report.json").read_text())
    # The online trainer's shape computed for the tiny model (the top 40% of its 2
    # layers: 1), with the one field given as a flag replaced.
    assert report["run"]["lora"] == {
        "rank": 4,
        "alpha": 16.0,
        "targets": "gate_proj,up_proj,down_proj",
        "top_layers": 1,
    }
    for name in ("base", "oracle", "memory", "adapter", "adapter+memory"):
        assert 0.0 <= report["conditions"][name]["success"] <= 1.0
        assert set(report["conditions"][name]["per_user"]) == {"alice", "bob"}
    assert report["learning_curve"]["points"] == ["0", "1", "all"]
    assert report["cost"]["adapter_bytes_mean"] > 0
    assert report["run"]["home"] == "home"  # OUT/home, recorded relative to OUT
    # trained through the toolkit: versions for k=1 and k=5 in the run's own registry
    from adaptkit.kit import AdaptKit

    versions = AdaptKit(out / "home").registry.versions("alice")
    assert [v.number for v in versions] == [1, 2] and versions[-1].status == "active"
    assert (out / "learning_curve.png").is_file() and (out / "conditions.png").is_file()


def test_cli_rejects_bad_input_before_loading_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 1, "intent": "u: hi", "eval": {"eval_types": []}}\n')
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "arena",
            "run",
            "--episodes",
            str(bad),
            "--out",
            str(out),
            "--base",
            str(tmp_path / "no-model"),
        ],
    )
    assert result.exit_code == 2
    assert f"{bad}:1: field 'eval.eval_types'" in result.output
    assert not out.exists()
    result = CliRunner().invoke(
        main, ["arena", "run", "--out", str(out), "--conditions", "base,telepathy"]
    )
    assert result.exit_code == 2 and "telepathy" in result.output
    result = CliRunner().invoke(main, ["arena", "run", "--out", str(out), "--users", "Nobody"])
    assert result.exit_code == 2 and "Nobody" in result.output and not out.exists()
    result = CliRunner().invoke(main, ["arena", "run", "--out", str(out), "--answer-batch", "0"])
    assert result.exit_code == 2 and "--answer-batch must be >= 1, got 0" in result.output
    assert not out.exists()
    result = CliRunner().invoke(
        main, ["arena", "run", "--out", str(out), "--calibrate-strength", "-1"]
    )
    assert result.exit_code == 2 and "--calibrate-strength must be >= 0" in result.output
    assert not out.exists()
    result = CliRunner().invoke(main, ["arena", "run", "--out", str(out), "--rank", "0"])
    assert result.exit_code == 2 and "--rank must be a positive integer" in result.output
    assert not out.exists()


def test_arena_defaults_are_the_options_and_the_lora_flags_default_to_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adaptkit.cli.arena as cli_arena
    from adaptkit.training import TrainConfig

    taken: list[ArenaOptions] = []

    def record(options: ArenaOptions) -> dict[str, Path]:
        taken.append(options)
        return {name: tmp_path for name in ("markdown", "json", "curve", "conditions")}

    monkeypatch.setattr(cli_arena, "run_arena", record)
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["arena", "run", "--out", str(out)]).exit_code == 0
    assert taken[-1] == ArenaOptions(out=out)
    assert taken[-1].lora is None  # the learner computes the shape from the loaded model
    assert ArenaOptions(out=out).sft == ARENA_TRAIN
    assert (
        TrainConfig(steps=24, lr=4e-3, batch_size=4, word_dropout=0.3, choice_weight=1.0)
        == ARENA_TRAIN
    )
    assert ARENA_TRAIN.kl_weight == TrainConfig().kl_weight == 10.0  # the online trainer's
    flags = ["arena", "run", "--out", str(out), "--kl-weight", "5", "--anchor-prompts", "2"]
    assert CliRunner().invoke(main, flags).exit_code == 0
    assert (taken[-1].sft.kl_weight, taken[-1].sft.anchor_prompts) == (5.0, 2)
    flags = ["arena", "run", "--out", str(out), "--top-layers", "2", "--alpha", "8"]
    assert CliRunner().invoke(main, flags).exit_code == 0
    assert taken[-1].lora == {"top_layers": 2, "alpha": 8.0}
    assert taken[-1].repetition == Repetition(frequency_penalty=0.5) == ARENA_REPETITION
    flags = ["arena", "run", "--out", str(out), "--repetition-penalty", "1.2"]
    assert CliRunner().invoke(main, [*flags, "--no-repeat-ngram-size", "3"]).exit_code == 0
    assert taken[-1].repetition == Repetition(
        repetition_penalty=1.2, no_repeat_ngram_size=3, frequency_penalty=0.5
    )
    refused = CliRunner().invoke(
        main, ["arena", "run", "--out", str(out), "--presence-penalty", "9"]
    )
    assert refused.exit_code == 2 and "presence_penalty must be in [-2, 2]" in refused.output
    help_text = CliRunner().invoke(main, ["arena", "run", "--help"]).output
    assert "[default: 24]" in help_text and "[default: 0.3]" in help_text
    assert "--kl-weight" in help_text and "[default: 10.0]" in help_text
    assert "online trainer's shape for" in help_text
    with pytest.raises(InputError, match="lora: rnk not fields of LoraSpec"):
        ArenaOptions(out=out, lora={"rnk": 4})


def test_sft_anchor_replays_the_base_models_own_answers(tmp_path: Path, tiny_model_dir: Path):
    from adaptkit.arena import KitLearner
    from adaptkit.arena.backends import ANCHOR_MAX_NEW_TOKENS
    from adaptkit.kit import AdaptKit
    from adaptkit.learning import ANCHOR_PROMPTS
    from adaptkit.training import TrainConfig

    kit = AdaptKit(tmp_path / "home", base=str(tiny_model_dir))
    history = load_episodes(_suite(tmp_path)).history["alice"][:3]
    learner = KitLearner(kit, method="sft-anchor", config=TrainConfig(steps=2))
    learned = learner.learn("alice", history)
    assert learned.examples == 6  # 3 history records + 3 anchors
    base_answers = kit.chat_many(list(ANCHOR_PROMPTS[:3]), max_new_tokens=ANCHOR_MAX_NEW_TOKENS)
    assert [answer for _, answer in learner.anchors()[:3]] == base_answers
    plain = KitLearner(kit, method="sft", config=TrainConfig(steps=2)).learn("alice", history)
    assert plain.examples == 3 and plain.version == learned.version + 1


def test_sft_kl_trains_with_the_online_kl_anchor(tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    from adaptkit.arena import KitLearner
    from adaptkit.kit import AdaptKit
    from adaptkit.learning import AnchorSet, LoraSpec, losses
    from adaptkit.training import TrainConfig

    calls = []
    original = losses.kl_to_reference
    original_build = AnchorSet.build
    monkeypatch.setattr(losses, "kl_to_reference", lambda *a: calls.append(1) or original(*a))
    kit = AdaptKit(tmp_path / "home", base=str(tiny_model_dir))
    history = load_episodes(_suite(tmp_path)).history["alice"][:3]
    lora = LoraSpec(rank=2, targets="gate_proj,up_proj,down_proj", top_layers=1)
    learned = KitLearner(kit, method="sft-kl", lora=lora, config=TrainConfig(steps=2)).learn(
        "alice", history
    )
    version = kit.registry.versions("alice")[-1]
    assert learned.version == version.number and version.method == "sft+kl"
    assert calls, "the KL anchor never ran"
    calls.clear()
    built = []
    monkeypatch.setattr(
        AnchorSet, "build", classmethod(lambda cls, *a: built.append(1) or original_build(*a))
    )
    contrast = KitLearner(kit, method="contrast-kl", lora=lora, config=TrainConfig(steps=2))
    assert contrast.learn("alice", history).version == version.number + 1
    assert kit.registry.versions("alice")[-1].method == "contrast+kl" and calls
    assert not built, "the base model's anchor answers are built once per loaded base"
    with pytest.raises(InputError, match="--top-layers 3: the model has only 2"):
        KitLearner(kit, method="sft-kl", lora=LoraSpec(top_layers=3)).learn("alice", history)


def test_sft_kl_trains_on_thinned_requests_with_word_dropout(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch
):
    from adaptkit.arena import KitLearner
    from adaptkit.kit import AdaptKit
    from adaptkit.learning import LoraSpec
    from adaptkit.training import TrainConfig
    from adaptkit.training import fit as offline

    seen: list[str] = []
    original = offline.run_steps

    def recording(slot, rule, batches, *args, **kwargs):
        def watched(step):
            examples = batches(step)
            seen.extend(e.messages[-1]["content"] for e in examples)
            return examples

        return original(slot, rule, watched, *args, **kwargs)

    monkeypatch.setattr(offline, "run_steps", recording)
    kit = AdaptKit(tmp_path / "home", base=str(tiny_model_dir))
    history = load_episodes(_suite(tmp_path)).history["alice"][:3]
    asked = {record.interaction.messages[-1].content for record in history}
    lora = LoraSpec(rank=2, targets="gate_proj,up_proj,down_proj", top_layers=1)
    config = TrainConfig(steps=8, word_dropout=0.5)
    KitLearner(kit, method="sft-kl", lora=lora, config=config).learn("alice", history)
    assert len(seen) == 8 * 3
    assert any(text not in asked for text in seen)
    # a few fixed views per request, so the split forward's cache serves them again
    assert len(set(seen)) <= 3 * offline.DROPOUT_VIEWS
    version = kit.registry.versions("alice")[-1]
    assert version.config["train"]["word_dropout"] == 0.5  # recorded with the version


def test_online_method_streams_history_through_the_online_trainer(
    tmp_path: Path, tiny_model_dir: Path
):
    from adaptkit.arena.backends import OnlineLearner
    from adaptkit.kit import AdaptKit
    from adaptkit.online import OnlineConfig

    kit = AdaptKit(tmp_path / "home", base=str(tiny_model_dir))
    history = load_episodes(_suite(tmp_path)).history["alice"]
    config = OnlineConfig(steps=1, holdout_every=0, anchor_prompts=1, replay=1)
    learner = OnlineLearner(kit, config=config)
    try:
        first = learner.learn("alice", history[:1])
        second = learner.learn("alice", history[:3])
        assert second.version > first.version
        events = learner.trainer().log.events("alice")
        assert len(events) == 3 and {e.kind for e in events} == {"accept"}
        assert {e.outcome for e in events} == {"trained"}  # each streamed once, all trained
        with pytest.raises(InputError, match="streams history in order"):
            learner.learn("alice", history[:2])
        # A new run over a home where the user already has versions would warm-start
        # from them (and could report one of them): refused.
        with pytest.raises(InputError, match="already has adapter versions"):
            OnlineLearner(kit, config=config).learn("alice", history[:1])
    finally:
        learner.close()


def test_kit_responder_answers_under_its_repetition_control(tmp_path: Path, tiny_model_dir: Path):
    from adaptkit.arena import KitResponder
    from adaptkit.kit import AdaptKit

    control = Repetition(no_repeat_ngram_size=1)
    prompt = "What should I cook for dinner tonight?"
    with AdaptKit(tmp_path / "home", base=str(tiny_model_dir)) as kit:
        answered = KitResponder(kit, repetition=control).answer(
            [Request(prompt)], max_new_tokens=24
        )
        assert answered == kit.chat_many([prompt], max_new_tokens=24, repetition=control)
        assert answered != KitResponder(kit).answer([Request(prompt)], max_new_tokens=24)

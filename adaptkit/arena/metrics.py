"""Numbers of an arena run, as the plain dict ``report.json`` holds.

Definitions (also in docs/episodes.md):

- success: fraction of scored deployment requests passed, overall (every request
  counts once) and per user; ``fraction_of_oracle`` = success / oracle success.
- retention: probe success with the users' final adapters (every user x probe)
  divided by probe success of the base model.
- leakage: user A's request answered with user B's adapter (B = the user after A
  in the run, cyclically). A pair counts (is *eligible*) when A's answer is wrong for
  B: the base model fails the request (it needs A's personal knowledge) and none
  of B's history answers passes A's checks. It *leaks* when B's adapter passes
  A's checks anyway. leakage = leaked / eligible.
- must_exclude hits: fraction of a condition's answers containing a value the
  task excludes (in the bundled suite: another user's value of the same habit).
- label baselines (no model): when the history answers come from a small label set
  (at most ``LABEL_SET_MAX`` distinct answers, each used twice on average), the
  success of always answering the user's most frequent history answer, and of always
  answering the most frequent one over all users, scored by each task's own checks.
- looping: fraction of a condition's answers caught in a loop: some run of 1 to
  ``LOOP_MAX_WORDS`` words repeated ``LOOP_REPEATS`` times back to back ("no, no, no",
  "the bus, the bus, the bus"), words compared lower-cased without punctuation.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from statistics import mean
from typing import Any

from adaptkit.arena.episodes import Task
from adaptkit.arena.evaluators import normalize, score
from adaptkit.arena.runner import Answer, ArenaResult

LOOP_MAX_WORDS = 6
LOOP_REPEATS = 3


def loops(text: str) -> bool:
    """Whether ``text`` repeats a run of 1 to ``LOOP_MAX_WORDS`` words ``LOOP_REPEATS``
    times in a row (see the module's definition of looping)."""
    words = re.findall(r"\w+", text.lower())
    for size in range(1, LOOP_MAX_WORDS + 1):
        span = size * LOOP_REPEATS
        for start in range(len(words) - span + 1):
            if words[start : start + span] == words[start : start + size] * LOOP_REPEATS:
                return True
    return False


def _rate(answers: list[Answer]) -> float | None:
    return round(float(mean(a.passed for a in answers)), 4) if answers else None


def _per_user(answers: list[Answer], key: str = "task_user") -> dict[str, float | None]:
    groups: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        groups[getattr(answer, key)].append(answer)
    return {user: _rate(group) for user, group in sorted(groups.items())}


def _conditions(result: ArenaResult) -> dict[str, dict[str, Any]]:
    by_condition: dict[str, list[Answer]] = defaultdict(list)
    for answer in result.answers:
        by_condition[answer.condition].append(answer)
    out = {}
    for name in ("base", "oracle", "memory", "adapter", "adapter+memory"):
        answers = by_condition.get(name)
        if not answers:
            continue
        out[name] = {
            "success": _rate(answers),
            "n": len(answers),
            "per_user": _per_user(answers),
            "prompt_tokens_mean": round(mean(a.prompt_tokens for a in answers), 1),
            "must_exclude_hits": round(mean(bool(a.excluded) for a in answers), 4),
            "looping": round(mean(loops(a.text) for a in answers), 4),
        }
    oracle = out.get("oracle", {}).get("success")
    for numbers in out.values():
        numbers["fraction_of_oracle"] = round(numbers["success"] / oracle, 4) if oracle else None
    return out


# History answers taking at most this many distinct values make a label task.
LABEL_SET_MAX = 30


def majority(answers: list[str]) -> str | None:
    """The most frequent answer (ties: the one seen first), None when there is none."""
    counts = Counter(answers)
    return counts.most_common(1)[0][0] if counts else None


def label_baselines(result: ArenaResult) -> dict[str, Any]:
    """Predictors that answer every request with a past label, without a model.

    A user without history answers nothing (fails). Only for label tasks: free-text
    histories (every answer different) make these predictors meaningless.
    """
    suite = result.suite
    past = {
        user: [
            normalize(r.interaction.sft_target)
            for r in suite.history.get(user, ())
            if r.interaction.sft_target
        ]
        for user in result.users
    }
    answers = [a for user_answers in past.values() for a in user_answers]
    distinct = len(set(answers))
    if not answers or distinct > LABEL_SET_MAX or 2 * distinct > len(answers):
        return {
            "label_task": False,
            "distinct_history_answers": distinct,
            "history_answers": len(answers),
        }
    overall = majority(answers)
    tasks = {
        user: [t for t in suite.deployment.get(user, ()) if not t.eval.skip_reason]
        for user in result.users
    }

    def rate(passed: dict[str, list[bool]]) -> dict[str, Any]:
        every = [p for user_passed in passed.values() for p in user_passed]
        return {
            "success": round(float(mean(every)), 4) if every else None,
            "n": len(every),
            "per_user": {
                u: round(float(mean(p)), 4) if p else None for u, p in sorted(passed.items())
            },
        }

    def passes(answer: str | None, user: str) -> list[bool]:
        return [answer is not None and score(answer, t.eval).passed for t in tasks[user]]

    return {
        "label_task": True,
        "distinct_history_answers": distinct,
        "history_answers": len(answers),
        "user_majority": rate({u: passes(majority(past[u]), u) for u in result.users}),
        "global_majority": {
            **rate({u: passes(overall, u) for u in result.users}),
            "answer": overall,
        },
    }


def _retention(result: ArenaResult) -> dict[str, Any]:
    base = [a for a in result.answers if a.condition == "probe:base"]
    adapted = [a for a in result.answers if a.condition == "probe:adapter"]
    base_rate, adapted_rate = _rate(base), _rate(adapted)
    return {
        "retention": round(adapted_rate / base_rate, 4) if base_rate and adapted else None,
        "base_probe_success": base_rate,
        "adapter_probe_success": adapted_rate,
        "probes": len(base),
        "per_user": _per_user(adapted, "adapter_user"),
    }


def _leakage(result: ArenaResult) -> dict[str, Any]:
    tasks: dict[Any, Task] = {
        t.task_id: t for user_tasks in result.suite.deployment.values() for t in user_tasks
    }
    base_passed = {a.task_id: a.passed for a in result.answers if a.condition == "base"}
    pairs = []
    for answer in (a for a in result.answers if a.condition == "leakage"):
        task = tasks[answer.task_id]
        other_history = result.suite.history.get(answer.adapter_user, ())
        wrong_for_other = not any(
            score(r.interaction.sft_target or "", task.eval).passed for r in other_history
        )
        eligible = wrong_for_other and not base_passed.get(answer.task_id, False)
        pairs.append(
            {
                "task_id": answer.task_id,
                "task_user": answer.task_user,
                "adapter_user": answer.adapter_user,
                "eligible": eligible,
                "leaked": eligible and answer.passed,
                "answer": answer.text,
            }
        )
    eligible = [p for p in pairs if p["eligible"]]
    leaked = [p for p in eligible if p["leaked"]]
    return {
        "rate": round(len(leaked) / len(eligible), 4) if eligible else None,
        "leaked": len(leaked),
        "eligible": len(eligible),
        "answered": len(pairs),
        "definition": "user A's request answered with user B's final adapter; eligible when "
        "the base model fails it and none of B's history answers passes its checks; leaked "
        "when B's adapter passes A's checks",
        "pairs": pairs,
    }


def _curve(result: ArenaResult) -> dict[str, Any]:
    """Per user: k = 0 (base), each intermediate k, and "all" (the final adapter)."""
    per_user: dict[str, dict[str, float | None]] = {}
    for user in result.users:
        mine = [a for a in result.answers if a.task_user == user]
        points: dict[str, float | None] = {"0": _rate([a for a in mine if a.condition == "base"])}
        curve = [a for a in mine if a.condition == "curve" and a.adapter_user == user]
        for k in sorted({a.k for a in curve}):
            points[str(k)] = _rate([a for a in curve if a.k == k])
        final = [a for a in mine if a.condition == "adapter" and a.adapter_user == user]
        if final:
            points["all"] = _rate(final)
        per_user[user] = points
    keys = sorted({k for p in per_user.values() for k in p if k != "all"}, key=int)
    keys += ["all"] if any("all" in p for p in per_user.values()) else []
    success = {}
    for key in keys:
        values = [p[key] for p in per_user.values() if p.get(key) is not None]
        success[key] = round(mean(values), 4) if values else None
    sizes = {user: len(result.suite.history.get(user, ())) for user in result.users}
    return {
        "points": keys,
        "success": success,
        "per_user": per_user,
        "history_records": sizes,
        "note": "mean over users of deployment success after learning from the first k "
        "history records (0 = base model; 'all' = each user's whole history)",
    }


def _cost(result: ArenaResult, conditions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    finals = {user: learned[-1][1] for user, learned in result.learned.items() if learned}
    train_total = {
        user: round(sum(item.train_seconds for _, item in learned), 2)
        for user, learned in result.learned.items()
    }
    return {
        "train_seconds_per_user": {u: round(item.train_seconds, 2) for u, item in finals.items()},
        "train_seconds_per_user_mean": (
            round(mean(i.train_seconds for i in finals.values()), 2) if finals else None
        ),
        "train_seconds_with_curve_per_user": train_total,
        "adapter_bytes_per_user": {u: item.adapter_bytes for u, item in finals.items()},
        "adapter_bytes_mean": round(mean(i.adapter_bytes for i in finals.values()))
        if finals
        else None,
        "prompt_tokens_mean": {name: c["prompt_tokens_mean"] for name, c in conditions.items()},
    }


def summarize(result: ArenaResult, run: dict[str, Any]) -> dict[str, Any]:
    """Everything ``report.json`` holds. ``run`` describes the run (model, method, ...)."""
    conditions = _conditions(result)
    summary: dict[str, Any] = {
        "run": {
            **run,
            "users": result.users,
            "wall_seconds": round(result.wall_seconds, 1),
            "curve_points": result.curve_points,
        },
        "conditions": conditions,
        "retention": _retention(result),
        "leakage": _leakage(result),
        "learning_curve": _curve(result),
        "baselines": label_baselines(result),
        "skipped": result.skipped,
    }
    summary["cost"] = _cost(result, conditions)
    summary["answers"] = [
        {
            "condition": a.condition,
            "task_id": a.task_id,
            "task_user": a.task_user,
            "adapter_user": a.adapter_user,
            "k": a.k,
            "passed": a.passed,
            "answer": a.text,
            "excluded_found": list(a.excluded),
        }
        for a in result.answers
    ]
    return summary

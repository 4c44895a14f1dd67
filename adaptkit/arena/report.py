"""Write an arena summary as ``report.json``, ``report.md`` and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

CONDITION_COLORS = {
    "base": "#9e9e9e",
    "oracle": "#2e7d32",
    "memory": "#1565c0",
    "adapter": "#e65100",
    "adapter+memory": "#6a1b9a",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _decoding(run: dict[str, Any]) -> str:
    """How the run decoded, from its calibration and repetition settings (plain dicts
    in ``run``)."""
    calibration = run.get("calibration") or {}  # none recorded: plain greedy decoding
    described = "greedy"
    if calibration.get("tokens", 0) > 0 and calibration.get("strength", 0) > 0:
        described += (
            f", first {calibration['tokens']} tokens calibrated "
            f"(strength {calibration['strength']}, plausibility {calibration['plausibility']})"
        )
    off = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    controls = [
        f"{name} {value}"
        for name, value in (run.get("repetition") or {}).items()
        if value != off.get(name, 0.0)
    ]
    return described + (f", {', '.join(controls)}" if controls else "")


def markdown(summary: dict[str, Any]) -> str:
    run, conditions = summary["run"], summary["conditions"]
    lines = [
        "# Arena report",
        "",
        f"Episodes `{run['episodes']}` · model `{run['model']}` · method `{run['method']}` · "
        f"retriever `{run['retriever']}` · decoding {_decoding(run)} · {len(run['users'])} users · "
        f"wall {run['wall_seconds']:.0f} s{' · quick mode' if run.get('quick') else ''}",
        "",
        "## Success per condition",
        "",
        "| condition | success | of oracle | tasks | prompt tokens (mean) | must_exclude hits "
        "| looping |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in conditions.items():
        lines.append(
            f"| {name} | {_fmt(c['success'])} | {_fmt(c['fraction_of_oracle'])} | {c['n']} | "
            f"{_fmt(c['prompt_tokens_mean'])} | {_fmt(c['must_exclude_hits'])} | "
            f"{_fmt(c.get('looping'))} |"
        )
    lines += _baseline_rows(summary)
    users = run["users"]
    lines += [
        "",
        "## Per user",
        "",
        "| user | " + " | ".join(conditions) + " |",
        "|---|" + "---|" * len(conditions),
    ]
    for user in users:
        cells = [_fmt(c["per_user"].get(user)) for c in conditions.values()]
        lines.append(f"| {user} | " + " | ".join(cells) + " |")

    curve = summary["learning_curve"]
    lines += [
        "",
        "## Learning curve (deployment success after k history records)",
        "",
        "| k | " + " | ".join(curve["points"]) + " |",
        "|---|" + "---|" * len(curve["points"]),
        "| success | " + " | ".join(_fmt(curve["success"].get(k)) for k in curve["points"]) + " |",
    ]

    retention, leakage, cost = summary["retention"], summary["leakage"], summary["cost"]
    lines += [
        "",
        "## Retention, leakage, cost",
        "",
        "| metric | value |",
        "|---|---|",
        f"| retention (adapter probe success / base) | {_fmt(retention['retention'])} "
        f"({_fmt(retention['adapter_probe_success'])} / {_fmt(retention['base_probe_success'])}"
        f", {retention['probes']} probes) |",
        f"| leakage (leaked / eligible cross-user answers) | {_fmt(leakage['rate'])} "
        f"({leakage['leaked']} / {leakage['eligible']}) |",
        f"| training seconds per user (final adapter, mean) | "
        f"{_fmt(cost['train_seconds_per_user_mean'])} |",
        f"| adapter bytes (mean) | {_fmt(cost['adapter_bytes_mean'])} |",
    ]
    if summary["skipped"]:
        lines += ["", "## Skipped", "", "| task | user | reason |", "|---|---|---|"]
        lines += [f"| {s['task_id']} | {s['user']} | {s['reason']} |" for s in summary["skipped"]]
    lines += ["", "Definitions: docs/episodes.md. Every answer is in report.json (`answers`).", ""]
    return "\n".join(lines)


BASELINE_NAMES = {
    "user_majority": "*user's most frequent label (no model)*",
    "global_majority": "*most frequent label overall (no model)*",
}


def _baseline_rows(summary: dict[str, Any]) -> list[str]:
    """Label tasks: what always answering a past label scores, beside the conditions."""
    baselines = summary.get("baselines") or {}
    if not baselines.get("label_task"):
        return []
    oracle = summary["conditions"].get("oracle", {}).get("success")
    rows = []
    for key, name in BASELINE_NAMES.items():
        b = baselines[key]
        of_oracle = b["success"] / oracle if oracle and b["success"] is not None else None
        rows.append(f"| {name} | {_fmt(b['success'])} | {_fmt(of_oracle)} | {b['n']} | – | – |")
    return rows


def plot_curve(summary: dict[str, Any], path: Path) -> None:
    curve = summary["learning_curve"]
    longest = max(curve["history_records"].values(), default=1)

    def x(key: str, user: str | None = None) -> int:
        # "all" sits at the user's history size (the longest one for the mean).
        if key != "all":
            return int(key)
        return curve["history_records"][user] if user else longest

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for user, points in curve["per_user"].items():
        keys = [k for k in points if points[k] is not None]
        ax.plot(
            [x(k, user) for k in keys], [points[k] for k in keys], color="#e65100", alpha=0.2, lw=1
        )
    keys = [k for k in curve["points"] if curve["success"].get(k) is not None]
    ax.plot(
        [x(k) for k in keys],
        [curve["success"][k] for k in keys],
        "o-",
        color="#e65100",
        lw=2.2,
        label="adapter (mean over users)",
    )
    for name in ("oracle", "memory", "base"):
        if name in summary["conditions"]:
            ax.axhline(
                summary["conditions"][name]["success"],
                ls="--",
                lw=1.2,
                color=CONDITION_COLORS[name],
                label=name,
            )
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks([x(k) for k in keys], [f"all ({longest})" if k == "all" else k for k in keys])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("history records learned from (k)")
    ax.set_ylabel("deployment success")
    ax.set_title("Learning curve (thin lines: individual users)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_conditions(summary: dict[str, Any], path: Path) -> None:
    conditions = summary["conditions"]
    users = summary["run"]["users"]
    fig, (overall, per_user) = plt.subplots(
        1, 2, figsize=(11, 4.0), dpi=110, gridspec_kw={"width_ratios": [1, 2.6]}
    )
    names = list(conditions)
    values = [conditions[n]["success"] or 0.0 for n in names]
    bars = overall.bar(names, values, color=[CONDITION_COLORS[n] for n in names])
    overall.bar_label(bars, fmt="%.2f", fontsize=8)
    overall.set_ylim(0, 1.1)
    overall.set_ylabel("deployment success")
    overall.set_title("All users")
    overall.tick_params(axis="x", rotation=30, labelsize=8)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [u + (i - (len(names) - 1) / 2) * width for u in range(len(users))]
        ys = [conditions[name]["per_user"].get(user) or 0.0 for user in users]
        per_user.bar(xs, ys, width=width, color=CONDITION_COLORS[name], label=name)
    per_user.set_xticks(range(len(users)), users, rotation=30, fontsize=8)
    per_user.set_ylim(0, 1.1)
    per_user.set_title("Per user")
    per_user.legend(fontsize=7, ncol=len(names), loc="upper center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# Run settings that hold a path: a report names no machine path (see ``portable_path``).
PATH_SETTINGS = ("episodes", "home")


def portable_path(path: str, out: Path) -> str:
    """``path`` as a report records it, naming nothing of the machine it ran on.

    A relative path stays as the user gave it. An absolute one becomes relative to
    the report's directory ``out`` when inside it (the run's own home: ``home``), to
    the installed package when inside it (the bundled suite:
    ``adaptkit/arena/data/starter_suite.jsonl``), or to the user's home directory
    (``~/...``); any other absolute path is kept as given.
    """
    given = Path(path)
    if not given.is_absolute():
        return path
    resolved = given.resolve()
    package = Path(__file__).resolve().parents[1]  # the installed adaptkit/ directory
    if resolved.is_relative_to(out.resolve()):
        return resolved.relative_to(out.resolve()).as_posix()
    if resolved.is_relative_to(package):
        return resolved.relative_to(package.parent).as_posix()
    try:
        home = Path.home().resolve()
    except RuntimeError:  # no home directory known
        return path
    if resolved.is_relative_to(home):
        return "~/" + resolved.relative_to(home).as_posix()
    return path


def run_path(recorded: str, out: Path) -> Path:
    """The path a report's run setting names, for a tool reading the report in ``out``.

    Undoes ``portable_path``: ``~`` is expanded; a relative path is looked up in ``out``,
    then beside the installed package, then taken as it is (relative to the caller).
    """
    path = Path(recorded).expanduser()
    if path.is_absolute():
        return path
    package_parent = Path(__file__).resolve().parents[2]
    for candidate in (out / path, package_parent / path):
        if candidate.exists():
            return candidate
    return path


def write_report(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the three kinds of output into ``out``; returns their paths.

    The run settings' paths are recorded by ``portable_path``, so a report can be
    shared or committed as it is.
    """
    out.mkdir(parents=True, exist_ok=True)
    run = dict(summary["run"])
    for key in PATH_SETTINGS:
        if isinstance(run.get(key), str):
            run[key] = portable_path(run[key], out)
    summary = {**summary, "run": run}
    paths = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "curve": out / "learning_curve.png",
        "conditions": out / "conditions.png",
    }
    paths["json"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    paths["markdown"].write_text(markdown(summary))
    plot_curve(summary, paths["curve"])
    plot_conditions(summary, paths["conditions"])
    return paths

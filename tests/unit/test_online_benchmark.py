"""benchmarks/online.py --quant: bases compared in one run, their rounds alternating."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from benchmark_support import load_benchmark


@pytest.fixture(scope="module")
def online() -> ModuleType:
    return load_benchmark("online")


def _args(online: ModuleType, monkeypatch: pytest.MonkeyPatch, *argv: str):
    monkeypatch.setattr(sys, "argv", ["online.py", *argv])
    return online.parse_args()


def test_an_unknown_quant_is_refused_naming_the_flag(
    online: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _args(online, monkeypatch, "--json", "out.json", "--quant", "none,int4")
    assert "--quant 'int4' is not one of none, int8" in capsys.readouterr().err


def test_two_bases_alternate_their_update_rounds_and_report_the_ratio(
    online: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "online.json"
    argv = ["--json", str(out), "--base", str(tiny_model_dir), "--home", str(tmp_path / "h")]
    argv += ["--quant", "none,int8", "--conditions", "anchored", "--rounds", "2"]
    args = _args(online, monkeypatch, *argv, "--eval-every", "2", "--threads", "1")
    output = online.paired_report(args, online.run_paired(args), 0.0)

    updates = re.findall(r"^\[(anchored(?:-int8)?)\] update\s+(\d+)", capsys.readouterr().out, re.M)
    assert updates == [
        ("anchored", "1"),
        ("anchored-int8", "1"),
        ("anchored", "2"),
        ("anchored-int8", "2"),
    ]
    bases = output["bases"]
    assert [bases[q]["quant"] for q in ("none", "int8")] == ["none", "int8"]
    assert bases["int8"]["backend"].startswith("torch-int8")
    fp32, int8 = (bases[q]["update_latency_s_p50"] for q in ("none", "int8"))
    assert output["latency_p50_ratio_over_none"]["anchored"]["int8"] == pytest.approx(int8 / fp32)
    json.dumps(output)  # what main() writes

"""The foundation end to end on the real packaged SmolLM2-135M-Instruct."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from adaptkit import AdaptKit, TrainConfig
from adaptkit.base_model import load_base
from adaptkit.home import Home
from adaptkit.registry import sha256_file
from conftest import EXAMPLES

pytestmark = pytest.mark.integration

QUESTION = "How long does it take me to get to the train station?"
CYCLING = re.compile(r"bicycl|bike|cycl", re.IGNORECASE)
ALICE = re.compile(r"bicycl|bike|cycl|Lexington", re.IGNORECASE)


def test_packaged_gguf_was_converted_to_a_safetensors_cache(smollm2_cache: Path) -> None:
    assert (smollm2_cache / "model.safetensors").is_file()
    assert "gguf" in (smollm2_cache / "adaptkit-source.json").read_text()


def test_train_publish_and_answer_like_alice(smollm2_home: Path) -> None:
    kit = AdaptKit(smollm2_home)
    base_answer = kit.chat(QUESTION, max_new_tokens=32)
    version = kit.train(
        "alice", EXAMPLES / "alice.jsonl", config=TrainConfig(steps=30, lr=1e-3), progress=False
    )
    # Registry row and blob agree.
    assert version.number == 1 and version.status == "active" and version.method == "sft"
    assert version.base_model == "smollm2-135m-instruct"
    assert version.metrics["loss_last"] < version.metrics["loss_first"]
    weights = version.blob_path / "adapter_model.safetensors"
    assert sha256_file(weights) == version.blob_sha256
    assert kit.registry.active_version("alice").blob_sha256 == version.blob_sha256
    # Behaviour moved toward alice's habit (she cycles everywhere); the base does not know it.
    alice_answer = kit.chat(QUESTION, user="alice", max_new_tokens=32)
    assert not CYCLING.search(base_answer), base_answer
    assert CYCLING.search(alice_answer), alice_answer
    # Chatting with the adapter left the shared base untouched ...
    assert kit.chat(QUESTION, max_new_tokens=32) == base_answer
    # ... on a quantized base too, where PEFT's unload alone is not exact.
    nf4 = AdaptKit(smollm2_home, quant="nf4")
    nf4_base_answer = nf4.chat(QUESTION, max_new_tokens=16)
    # Her adapter answers on the nf4 base too: her habit or her home town (the base
    # knows neither); quantization noise decides which of the two this question gets.
    assert ALICE.search(nf4.chat(QUESTION, user="alice", max_new_tokens=16))
    assert not ALICE.search(nf4_base_answer), nf4_base_answer
    assert nf4.chat(QUESTION, max_new_tokens=16) == nf4_base_answer


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_quantized_base_loads_and_answers(smollm2_home: Path, quant: str) -> None:
    home = Home(smollm2_home)
    quantized = load_base("smollm2-135m-instruct", home=home, quant=quant)
    # int8 keeps lm_head and down_proj fp32 (docs/quant.md): 301 MB; nf4 166 MB.
    assert quantized.footprint_bytes < (0.6 if quant == "int8" else 0.5) * 538e6
    kit = AdaptKit(smollm2_home, quant=quant)
    kit._base = quantized
    answer = kit.chat("What is the capital of France?", max_new_tokens=8)
    assert "Paris" in answer


def test_cli_unknown_user_and_malformed_log_exit_codes(smollm2_home: Path, tmp_path: Path) -> None:
    adaptkit = [sys.executable, "-m", "adaptkit.cli.main", "--help"]
    assert subprocess.run(adaptkit, capture_output=True).returncode == 0
    chat = subprocess.run(
        [
            sys.executable,
            "-m",
            "adaptkit.cli.main",
            "chat",
            "--home",
            str(smollm2_home),
            "--user",
            "nobody",
            "hi",
        ],
        capture_output=True,
        text=True,
    )
    assert chat.returncode == 2 and "unknown user 'nobody'" in chat.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"user": "alice", "prompt": "hi", "response": "yo", "feedback": {"rating": 2}}\n'
    )
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "adaptkit.cli.main",
            "train",
            "--home",
            str(smollm2_home),
            "--user",
            "alice",
            "--log",
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert train.returncode == 2
    assert f"{bad}:1: field 'feedback.rating'" in train.stderr
    assert not (smollm2_home / "adapters" / "alice").exists()

"""The RAM tier (byte-bounded LRU, pins, real eviction) and adapter validation on load."""

from __future__ import annotations

import gc
import json
import os
import weakref
from pathlib import Path

import pytest
import torch
from bank_support import make_lora_dir, publish_dir
from safetensors.torch import load_file, save_file

from adaptkit.bank import AdapterError, AdapterWeights, ByteLRU, CacheFullError, Engine
from adaptkit.bank.adapter import LoraWeights
from adaptkit.base_model import load_base
from adaptkit.errors import BlobIntegrityError
from adaptkit.home import Home
from adaptkit.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Registry
from adaptkit.router import Request
from tiny_model import make_tiny_model_dir


def fake_adapter(label: str, rank: int, width: int = 256) -> AdapterWeights:
    lora = LoraWeights(torch.zeros(rank, width), torch.zeros(width, rank), 1.0)
    return AdapterWeights(label, {"m": lora}, None, Path("/nowhere"), "0")


def test_budget_is_bytes_so_a_rank_64_adapter_displaces_eight_rank_8_ones() -> None:
    small = fake_adapter("small", 8)
    assert small.nbytes == 2 * 8 * 256 * 4
    cache = ByteLRU(capacity_bytes=10 * small.nbytes)
    for i in range(10):
        cache.put(("u", i), fake_adapter(f"u{i}", 8), small.nbytes)
    assert len(cache) == 10 and cache.used_bytes == cache.capacity_bytes
    cache.get(("u", 0))  # recently used: survives
    big = fake_adapter("big", 64)
    cache.put(("big",), big, big.nbytes)
    assert big.nbytes == 8 * small.nbytes
    assert ("big",) in cache and ("u", 0) in cache
    assert {k for k in cache if k[0] == "u"} == {("u", 0), ("u", 9)}
    assert cache.evictions == 8 and cache.used_bytes <= cache.capacity_bytes


def test_pinned_entries_are_never_evicted() -> None:
    one = fake_adapter("one", 8)
    cache = ByteLRU(capacity_bytes=2 * one.nbytes)
    cache.put("a", one, one.nbytes)
    cache.pin("a")
    cache.put("b", fake_adapter("b", 8), one.nbytes)
    cache.put("c", fake_adapter("c", 8), one.nbytes)  # evicts b, not the pinned a
    assert list(cache) == ["a", "c"]
    cache.pin("c")
    with pytest.raises(CacheFullError, match="'d'|d needs"):
        cache.put("d", fake_adapter("d", 8), one.nbytes)
    cache.unpin("c")
    cache.put("d", fake_adapter("d", 8), one.nbytes)
    assert list(cache) == ["a", "d"]


def test_eviction_really_frees_the_tensors() -> None:
    adapter = fake_adapter("x", 8)
    watch = weakref.ref(adapter.modules["m"].A)
    cache = ByteLRU(capacity_bytes=adapter.nbytes)
    cache.put("x", adapter, adapter.nbytes)
    del adapter
    cache.put("y", fake_adapter("y", 8), fake_adapter("y", 8).nbytes)
    gc.collect()
    assert watch() is None and cache.used_bytes == fake_adapter("y", 8).nbytes


@pytest.fixture
def setup(tiny_model_dir: Path, tmp_path: Path):
    home = Home(tmp_path / "home").ensure()
    registry = Registry(home.registry_url, home.adapters_dir)
    base = load_base(str(tiny_model_dir), home=home)
    return home, registry, base, tiny_model_dir


def test_bank_cache_keeps_its_byte_budget_and_evicts_lru(setup, tmp_path: Path) -> None:
    home, registry, base, model_dir = setup
    for i in range(4):
        publish_dir(registry, f"u{i}", make_lora_dir(base.model, tmp_path / f"a{i}", seed=i),
                    str(model_dir))  # fmt: skip
    probe = Engine(load_base(str(model_dir), home=home), registry, shared_dir=tmp_path)
    one = probe.bank.load_user_active("u0").nbytes
    probe.close()
    engine = Engine(base, registry, shared_dir=tmp_path, cache_bytes=2 * one)
    bank = engine.bank
    first = bank.load_user_active("u0")
    watch = weakref.ref(first.modules["model.layers.0.self_attn.q_proj"].B)
    del first
    bank.prefetch(["u1", "u2"])
    gc.collect()
    assert bank.stats().entries == 2 and bank.stats().used_bytes == 2 * one
    assert watch() is None  # u0 was evicted and its memory released
    bank.pin("u1")
    bank.prefetch(["u3"])  # evicts u2, never the pinned u1
    held = {key[1] for key in bank.cache}
    assert held == {"u1", "u3"}
    with pytest.raises(CacheFullError):
        bank.pin("u3")
        bank.load_user_active("u0")
    assert bank.evict("u1") and "u1" not in {key[1] for key in bank.cache}
    engine.close()


def test_replaced_shared_adapter_is_reloaded(setup, tmp_path: Path) -> None:
    home, registry, base, model_dir = setup
    shared = tmp_path / "shared"
    make_lora_dir(base.model, shared / "tone", seed=1)
    with Engine(base, registry, shared_dir=shared) as engine:
        before = engine.generate([Request("hi", compose={"tone": 1.0})], max_new_tokens=6)[0]
        tensors = load_file(shared / "tone" / ADAPTER_WEIGHTS)
        flipped = {k: -v if "lora_B" in k else v for k, v in tensors.items()}
        save_file(flipped, shared / "tone" / ADAPTER_WEIGHTS)
        stat = (shared / "tone" / ADAPTER_WEIGHTS).stat()
        os.utime(shared / "tone" / ADAPTER_WEIGHTS, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10))
        after = engine.generate([Request("hi", compose={"tone": 1.0})], max_new_tokens=6)[0]
        assert engine.bank.stats().entries == 1
    assert before.tokens != after.tokens


def _user(registry, base, model_dir, tmp_path, user, **shape) -> Path:
    path = make_lora_dir(base.model, tmp_path / user, seed=5, **shape)
    publish_dir(registry, user, path, str(model_dir))
    return registry.active_version(user).blob_path


def test_adapter_for_a_different_base_is_refused_naming_it(setup, tmp_path: Path) -> None:
    home, registry, base, model_dir = setup
    other_dir = make_tiny_model_dir(tmp_path / "other-tiny", seed=3)
    other = load_base(str(other_dir), home=home)
    shared = tmp_path / "shared"
    make_lora_dir(other.model, shared / "foreign", seed=1)
    with Engine(base, registry, shared_dir=shared) as engine:
        with pytest.raises(AdapterError, match="shared adapter 'foreign' was built for base"):
            engine.generate([Request("hi", compose={"foreign": 1.0})])
        # Same name but other shapes: caught by the shape check even if the name matches.
        config = json.loads((shared / "foreign" / ADAPTER_CONFIG).read_text())
        config["base_model_name_or_path"] = str(model_dir)
        (shared / "foreign" / ADAPTER_CONFIG).write_text(json.dumps(config))
        tensors = load_file(shared / "foreign" / ADAPTER_WEIGHTS)
        wide = {k: torch.zeros(v.shape[0], 48) if "lora_A" in k else v for k, v in tensors.items()}
        save_file(wide, shared / "foreign" / ADAPTER_WEIGHTS)
        with pytest.raises(AdapterError, match="'foreign'.*different base model"):
            engine.generate([Request("hi", compose={"foreign": 1.0})])


def test_incompatible_modules_non_finite_and_corrupt_blobs(setup, tmp_path: Path) -> None:
    home, registry, base, model_dir = setup
    # An adapter of a deeper model: it targets layer 7, which the 2-layer base lacks.
    deep = make_lora_dir(base.model, tmp_path / "deep", seed=5, targets=["q_proj"])
    tensors = load_file(deep / ADAPTER_WEIGHTS)
    save_file({k.replace("layers.1.", "layers.7."): v for k, v in tensors.items()},
              deep / ADAPTER_WEIGHTS)  # fmt: skip
    publish_dir(registry, "deep", deep, str(model_dir))
    nan_blob = _user(registry, base, model_dir, tmp_path, "nan", rank=2)
    tensors = load_file(nan_blob / ADAPTER_WEIGHTS)
    key = next(iter(tensors))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, nan_blob / ADAPTER_WEIGHTS)
    good = _user(registry, base, model_dir, tmp_path, "good", rank=2)
    with Engine(base, registry, shared_dir=tmp_path) as engine:
        with pytest.raises(AdapterError, match="user 'deep' v1 targets module 'model.layers.7"):
            engine.generate([Request("hi", user="deep")])
        # The nan blob no longer matches its sha256: refused before parsing.
        with pytest.raises(BlobIntegrityError, match="user 'nan' v1.*sha256"):
            engine.generate([Request("hi", user="nan")])
        engine.bank.verify_sha256 = False
        with pytest.raises(AdapterError, match="user 'nan' v1.*non-finite"):
            engine.generate([Request("hi", user="nan")])
        results = engine.generate(
            [Request("hi", user="good"), Request("hi", user="deep")], errors="return",
            max_new_tokens=3,
        )  # fmt: skip
        assert results[0].ok and not results[1].ok and "layers.7" in str(results[1].error)
    assert good.is_dir()


def test_unsupported_peft_features_are_refused(setup, tmp_path: Path) -> None:
    home, registry, base, model_dir = setup
    shared = tmp_path / "shared"
    make_lora_dir(base.model, shared / "dora", seed=1)
    config = json.loads((shared / "dora" / ADAPTER_CONFIG).read_text())
    config["use_dora"] = True
    (shared / "dora" / ADAPTER_CONFIG).write_text(json.dumps(config))
    with (
        Engine(base, registry, shared_dir=shared) as engine,
        pytest.raises(AdapterError, match="shared adapter 'dora': use_dora"),
    ):
        engine.generate([Request("hi", compose={"dora": 1.0})])


def test_reload_rehashes_only_a_blob_that_changed_since_it_was_verified(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaptkit.bank import adapter as adapter_module

    home, registry, base, model_dir = setup
    blob = _user(registry, base, model_dir, tmp_path, "vera", rank=2)
    hashed = []
    real_sha256 = adapter_module.hashlib.sha256
    # Counts the weights' hashes only: the small config is checked on every cold load.
    monkeypatch.setattr(
        adapter_module.hashlib,
        "sha256",
        lambda data: (bytes(data[:1]) != b"{" and hashed.append(1)) or real_sha256(data),
    )
    with Engine(base, registry, shared_dir=tmp_path) as engine:
        engine.bank.load_user_active("vera")
        assert len(hashed) == 1
        engine.bank.evict("vera")
        engine.bank.load_user_active("vera")  # unchanged file: verified before, not re-hashed
        assert len(hashed) == 1
        engine.bank.evict("vera")
        tensors = load_file(blob / ADAPTER_WEIGHTS)
        key = next(k for k in tensors if "lora_B" in k)
        tensors[key] = tensors[key] + 1.0  # same size, different bytes
        save_file(tensors, blob / ADAPTER_WEIGHTS)
        with pytest.raises(BlobIntegrityError, match="user 'vera' v1.*sha256"):
            engine.bank.load_user_active("vera")
        assert len(hashed) == 2

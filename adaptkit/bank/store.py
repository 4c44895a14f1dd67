"""The adapter bank's tiers: disk (registry blobs, shared library) -> RAM LRU -> active.

- Disk: the registry's immutable blobs (``HOME/adapters/USER/vN``) and the shared
  library (``adapters/shared/NAME``).
- RAM: adapters already parsed into compute-ready tensors, in an LRU bounded in
  BYTES (a rank-64 adapter costs 8x a rank-8 one, so counting adapters would be
  a lie). Pinned entries are never evicted; eviction drops the last reference,
  so the memory is really returned.
- Active: the adapters a batch in flight uses. The engine pins them for the
  batch and points each layer at their tensors: switching a user is a pointer.

Cache keys carry the version's row id and sha256 (users) or the file's size and
mtime (shared adapters), so publishing a new version for a user, or replacing a
shared adapter on disk, is picked up on the next request: a stale copy under
the same name can never be served.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from adaptkit.bank.adapter import AdapterError, AdapterWeights, ModuleShape, read_adapter
from adaptkit.errors import InputError, UnknownUserError
from adaptkit.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Registry, VersionInfo

DEFAULT_CACHE_BYTES = 1 << 30  # 1 GiB: ~100 rank-8 all-linear SmolLM2-135M adapters


class CacheFullError(InputError):
    """An adapter does not fit in the RAM tier even after evicting everything unpinned."""


@dataclass
class _Entry:
    value: AdapterWeights
    nbytes: int
    pins: int = 0


class ByteLRU:
    """Least-recently-used cache whose budget is bytes, with pinning."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise InputError(f"cache_bytes must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self.used_bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Hashable]:
        """Keys, least recently used first (a snapshot: safe to evict while iterating)."""
        return iter(list(self._entries))

    def get(self, key: Hashable) -> AdapterWeights | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: Hashable, value: AdapterWeights, nbytes: int) -> None:
        if key in self._entries:
            self.discard(key)
        unpinned = sum(e.nbytes for e in self._entries.values() if e.pins == 0)
        if nbytes > self.capacity_bytes - (self.used_bytes - unpinned):
            pinned = self.used_bytes - unpinned
            raise CacheFullError(
                f"{value.label} needs {nbytes / 2**20:.1f} MiB but the RAM tier has "
                f"{self.capacity_bytes / 2**20:.1f} MiB of which {pinned / 2**20:.1f} MiB is "
                "pinned; raise cache_bytes or unpin adapters"
            )
        while self.used_bytes + nbytes > self.capacity_bytes:
            victim = next(k for k, e in self._entries.items() if e.pins == 0)
            self.discard(victim)
            self.evictions += 1
        self._entries[key] = _Entry(value, nbytes)
        self.used_bytes += nbytes

    def discard(self, key: Hashable) -> None:
        """Drop ``key`` (pinned or not): the cache keeps no reference to its tensors after."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used_bytes -= entry.nbytes

    def pin(self, key: Hashable) -> None:
        self._entries[key].pins += 1

    def unpin(self, key: Hashable) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.pins > 0:
            entry.pins -= 1

    def pinned(self, key: Hashable) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.pins > 0


@dataclass(frozen=True)
class BankStats:
    entries: int
    used_bytes: int
    capacity_bytes: int
    pinned: int
    hits: int
    misses: int
    evictions: int


UserKey = tuple[str, str, int, str]  # ("user", user id, version row id, sha256)
SharedKey = tuple[str, str, int, int]  # ("shared", name, size, mtime_ns)


class AdapterBank:
    """Loads adapters from the registry and the shared library through a byte-bounded LRU."""

    def __init__(
        self,
        registry: Registry,
        *,
        base_name: str,
        base_aliases: Iterable[str],
        shapes: Mapping[str, ModuleShape],
        shared_dir: Path,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        verify_sha256: bool = True,
    ) -> None:
        self.registry = registry
        self.base_name = base_name
        self.base_aliases = frozenset(a for a in base_aliases if a)
        self.shapes = dict(shapes)
        self.shared_dir = Path(shared_dir)
        self.verify_sha256 = verify_sha256
        self.cache = ByteLRU(cache_bytes)
        self._latest: dict[str, Hashable] = {}  # user or shared name -> its newest cached key
        # Blobs whose sha256 was checked, with the file's identity then: re-loading one
        # after eviction skips re-hashing unless the file was replaced or touched since.
        self._verified: dict[Path, tuple[tuple[int, int, int, int], str]] = {}
        self.hits = 0
        self.misses = 0

    # -- what exists (cheap, no tensors) ------------------------------------------------

    def active_version(self, user: str) -> VersionInfo | None:
        """The user's serving version from the registry (checked per request: never stale)."""
        return self.registry.active_version(user)

    def version(self, user: str, number: int) -> VersionInfo:
        """One version of the user's, active or not (unknown user or number raises)."""
        return self.registry.version(user, number)

    def shared_names(self) -> list[str]:
        if not self.shared_dir.is_dir():
            return []
        return sorted(p.name for p in self.shared_dir.iterdir() if (p / ADAPTER_CONFIG).is_file())

    def shared_path(self, name: str) -> Path:
        path = self.shared_dir / name
        if "/" in name or name in ("", ".", "..") or not (path / ADAPTER_WEIGHTS).is_file():
            known = ", ".join(self.shared_names()) or "none"
            raise AdapterError(
                f"unknown shared adapter {name!r}: no PEFT adapter at {path}. "
                f"Shared adapters in {self.shared_dir}: {known}"
            )
        return path

    # -- loading through the RAM tier ---------------------------------------------------

    def _get(self, owner: str, key: Hashable, load) -> AdapterWeights:
        cached = self.cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        adapter = load()
        previous = self._latest.get(owner)
        if previous is not None and previous != key and not self.cache.pinned(previous):
            # A newer version replaces the old one: free it now rather than let it age out.
            self.cache.discard(previous)
        self.cache.put(key, adapter, adapter.nbytes)
        self._latest[owner] = key
        return adapter

    def user_key(self, version: VersionInfo) -> UserKey:
        return ("user", version.user_id, version.id, version.blob_sha256)

    def load_user(self, version: VersionInfo) -> AdapterWeights:
        """The compute-ready adapter of one registry version (RAM hit or cold load from disk)."""
        if version.base_model != self.base_name:
            raise AdapterError(
                f"user {version.user_id!r} v{version.number} was trained on base "
                f"{version.base_model!r}, but this engine serves {self.base_name!r}"
            )
        return self._get(
            f"user:{version.user_id}", self.user_key(version), lambda: self._read_user(version)
        )

    def _read_user(self, version: VersionInfo) -> AdapterWeights:
        path = Path(version.blob_path)
        weights = path / ADAPTER_WEIGHTS
        try:
            stat = weights.stat()
            identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        except FileNotFoundError:
            identity = (0, 0, 0, 0)
        expected = version.blob_sha256 if self.verify_sha256 else None
        if self._verified.get(weights) == (identity, version.blob_sha256):
            expected = None  # verified before and not replaced or modified since
        adapter = read_adapter(
            path,
            label=f"user {version.user_id!r} v{version.number}",
            shapes=self.shapes,
            base_aliases=self.base_aliases,
            expected_sha256=expected,
            # The config is small: checked on every cold load, whatever the weights' cache.
            expected_config_sha256=version.config_sha256 if self.verify_sha256 else None,
        )
        if expected is not None:
            self._verified[weights] = (identity, expected)
        return adapter

    def shared_key(self, name: str) -> SharedKey:
        stat = (self.shared_path(name) / ADAPTER_WEIGHTS).stat()
        return ("shared", name, stat.st_size, stat.st_mtime_ns)

    def load_shared(self, name: str) -> AdapterWeights:
        key = self.shared_key(name)
        return self._get(
            f"shared:{name}",
            key,
            lambda: read_adapter(
                self.shared_dir / name,
                label=f"shared adapter {name!r}",
                shapes=self.shapes,
                base_aliases=self.base_aliases,
            ),
        )

    def load_user_active(self, user: str) -> AdapterWeights:
        version = self.active_version(user)
        if version is None:
            raise UnknownUserError(
                f"user {user!r} has no active adapter version; see `adaptkit versions {user}`"
            )
        return self.load_user(version)

    # -- app-facing controls ------------------------------------------------------------

    def prefetch(self, users: Iterable[str]) -> list[AdapterWeights]:
        """Load the users' active adapters into RAM now (e.g. when they open the app)."""
        return [self.load_user_active(user) for user in users]

    def pin(self, user: str) -> None:
        """Keep the user's active adapter in RAM until ``unpin`` (loads it if needed)."""
        version = self.active_version(user)
        if version is None:
            raise UnknownUserError(f"user {user!r} has no active adapter version to pin")
        self.load_user(version)
        self.cache.pin(self.user_key(version))

    def unpin(self, user: str) -> None:
        key = self._latest.get(f"user:{user}")
        if key is not None:
            self.cache.unpin(key)

    def evict(self, user: str) -> bool:
        """Drop the user's cached adapter now (even if pinned); True if something was held."""
        key = self._latest.pop(f"user:{user}", None)
        held = key is not None and key in self.cache
        if key is not None:
            self.cache.discard(key)
        return held

    def stats(self) -> BankStats:
        pinned = sum(1 for key in self.cache if self.cache.pinned(key))
        return BankStats(
            entries=len(self.cache),
            used_bytes=self.cache.used_bytes,
            capacity_bytes=self.cache.capacity_bytes,
            pinned=pinned,
            hits=self.hits,
            misses=self.misses,
            evictions=self.cache.evictions,
        )

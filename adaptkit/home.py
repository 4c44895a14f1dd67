"""The adaptkit home: the one directory adaptkit writes to unless told otherwise.

Layout::

    HOME/registry.db            SQLite registry (users, adapter versions); or --db / $ADAPTKIT_DB
    HOME/adapters/USER/sha256/  adapter blobs in PEFT format; or --blobs / $ADAPTKIT_BLOBS
    HOME/models/NAME/           base models converted once to safetensors
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from adaptkit.errors import InputError

DEFAULT_HOME = Path("~/.adaptkit")
HOME_ENV_VAR = "ADAPTKIT_HOME"
DB_ENV_VAR = "ADAPTKIT_DB"
BLOBS_ENV_VAR = "ADAPTKIT_BLOBS"


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Home:
        """``home`` if given, else ``$ADAPTKIT_HOME``, else ``~/.adaptkit``."""
        chosen = home if home is not None else os.environ.get(HOME_ENV_VAR) or DEFAULT_HOME
        return cls(Path(chosen).expanduser().resolve())

    @property
    def registry_url(self) -> str:
        return f"sqlite:///{self.root / 'registry.db'}"

    def database_url(self, db: str | None = None) -> str:
        """``db`` if given, else ``$ADAPTKIT_DB``, else the home's SQLite file."""
        return db or os.environ.get(DB_ENV_VAR) or self.registry_url

    def blob_root(self, blobs: str | os.PathLike[str] | None = None) -> Path:
        """``blobs`` if given, else ``$ADAPTKIT_BLOBS``, else the home's adapters folder."""
        chosen = blobs if blobs is not None else os.environ.get(BLOBS_ENV_VAR)
        return Path(chosen).expanduser().resolve() if chosen else self.adapters_dir

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def ensure(self) -> Home:
        """Create the home's folders; a clear error when the home cannot be one."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(
                f"home {self.root} is a file, not a directory: pass --home (or set "
                f"${HOME_ENV_VAR}) naming a directory"
            )
        try:
            for directory in (self.root, self.adapters_dir, self.models_dir):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(
                f"home {self.root}: cannot create {error.filename} ({error.strerror}); pass "
                f"--home (or set ${HOME_ENV_VAR}) naming a writable directory"
            ) from error
        return self

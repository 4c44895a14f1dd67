"""The adaptkit home: the one directory adaptkit writes to unless told otherwise.

Layout::

    HOME/registry.db            SQLite registry (users, adapter versions)
    HOME/adapters/USER/vN/      adapter blobs in PEFT format
    HOME/models/NAME/           base models converted once to safetensors
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path("~/.adaptkit")
HOME_ENV_VAR = "ADAPTKIT_HOME"


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

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def ensure(self) -> Home:
        for directory in (self.root, self.adapters_dir, self.models_dir):
            directory.mkdir(parents=True, exist_ok=True)
        return self

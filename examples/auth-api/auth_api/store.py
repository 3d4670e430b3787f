"""Users kept in a JSON file, with a backup command for operators."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


class UserStore:
    """Username -> password hash (and a pending reset token), saved as JSON."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.users: dict[str, dict[str, str]] = {}
        if self.path.exists():
            self.users = json.loads(self.path.read_text(encoding="utf-8"))

    def get(self, username: str) -> dict[str, str] | None:
        return self.users.get(username)

    def put(self, username: str, record: dict[str, str]) -> None:
        self.users[username] = record
        self.path.write_text(
            json.dumps(self.users, indent=2, sort_keys=True), encoding="utf-8"
        )

    def backup(self, dest: str | Path) -> Path:
        """Copy the user file to ``dest``."""
        subprocess.run(f"cp {self.path} {dest}", shell=True, check=True)
        return Path(dest)

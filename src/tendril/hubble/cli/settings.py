"""Flag values with viper's precedence: flag > HUBBLE_* environment > config.yaml > default.

hubble binds its global and server flags (and the raw allow/deny lists) to viper, so
``HUBBLE_SERVER=...`` or a ``server:`` line in config.yaml work like ``--server``. The config
file is the one given by ``--config``, else the first ``config.yaml`` found in the current
directory, ``~/.config/hubble/`` or ``~/.hubble/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tendril.hubble.cli.errors import CLIError
from tendril.hubble.cli.gotime import parse_duration
from tendril.hubble.cli.pflags import BOOL, DURATION, STRING_ARRAY, STRING_SLICE, UINT64, FlagSet, parse_bool


def _config_candidates() -> list[Path]:
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [Path.cwd() / "config.yaml", xdg / "hubble" / "config.yaml", home / ".hubble" / "config.yaml"]


class Settings:
    """Resolves a flag's effective value the way hubble's viper instance does."""

    def __init__(self, fs: FlagSet, env: Mapping[str, str] | None = None) -> None:
        self.fs = fs
        self.env = os.environ if env is None else env
        self._config: dict[str, Any] | None = None

    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = self._load_config()
        return self._config

    def _load_config(self) -> dict[str, Any]:
        explicit = self.fs.lookup("config")
        path: Path | None = None
        if explicit is not None and explicit.changed and explicit.value:
            path = Path(explicit.value)
        else:
            path = next((p for p in _config_candidates() if p.is_file()), None)
        if path is None:
            return {}
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise CLIError(f"failed to read config file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise CLIError(f"failed to parse config file {path}: {e}") from None
        return data if isinstance(data, dict) else {}

    def get(self, name: str) -> Any:
        flag = self.fs.lookup(name)
        if flag is None:
            raise KeyError(name)
        if flag.changed:
            return flag.value
        env_key = "HUBBLE_" + name.upper().replace("-", "_")
        if env_key in self.env:
            return self._convert(flag.kind, self.env[env_key], from_env=True)
        cfg = self.config()
        if name in cfg and cfg[name] is not None:
            return self._convert(flag.kind, cfg[name], from_env=False)
        return flag.value

    @staticmethod
    def _convert(kind: str, raw: Any, from_env: bool) -> Any:
        try:
            if kind == BOOL:
                return raw if isinstance(raw, bool) else parse_bool(str(raw))
            if kind == DURATION:
                if isinstance(raw, int):
                    return raw
                return parse_duration(str(raw))
            if kind == UINT64:
                return int(raw)
            if kind in (STRING_SLICE, STRING_ARRAY):
                if isinstance(raw, list):
                    return [str(v) for v in raw]
                return str(raw).split() if from_env else [str(raw)]
        except ValueError as e:
            raise CLIError(str(e)) from None
        return str(raw)

"""Parse Hubble's `--hubble-metrics` syntax into plugin specs.

Syntax (cilium-agent `--hubble-metrics`, Helm `hubble.metrics.enabled`): plugins separated by
whitespace; each is `name` or `name:option;option`, an option being `key=value` or a bare `key`
(a flag such as `any-drop` or `ignoreAAAA`). Only the syntax is checked here; which plugins and
options exist is each plugin's business, so the error can name the plugin that rejected it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One enabled plugin and its options (keys as written; compared case-insensitively, like Hubble)."""

    name: str
    options: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        want = key.lower()
        for k, v in self.options.items():
            if k.lower() == want:
                return v
        return default

    def has(self, key: str) -> bool:
        return self.get(key) is not None


def parse_plugin(text: str) -> PluginSpec:
    """`tcp:sourceContext=pod;destinationContext=pod` -> PluginSpec("tcp", {...})."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"hubble metrics: {text!r} has no plugin name before ':'")
    options: dict[str, str] = {}
    for part in rest.split(";"):
        if not part:
            continue  # tolerate a trailing ';'
        key, sep, value = part.partition("=")
        if not key:
            raise ValueError(f"hubble metrics plugin {name!r}: option {part!r} has no name before '='")
        if any(k.lower() == key.lower() for k in options):
            raise ValueError(f"hubble metrics plugin {name!r}: option {key!r} given twice")
        options[key] = value if sep else ""
    return PluginSpec(name, options)


def parse_spec(spec: str | Iterable[str]) -> list[PluginSpec]:
    """The whole option: a whitespace-separated string or an already split list of plugin texts."""
    parts = spec.split() if isinstance(spec, str) else [p for s in spec for p in s.split()]
    plugins = [parse_plugin(p) for p in parts]
    seen: set[str] = set()
    for p in plugins:
        if p.name in seen:
            raise ValueError(f"hubble metrics plugin {p.name!r} is listed twice; give its options once")
        seen.add(p.name)
    return plugins

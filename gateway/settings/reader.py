"""The generic TOML reader: typed values whose every error names the file and the key.

An operator fixes a config from the error alone, so each ConfigError says where
(`destinations[1].timeout_s`), what was found and what was expected. Unknown keys are
errors too: a typo such as `timout_s` silently falling back to a default is how outages get
longer, so a TableReader remembers which keys were read and `done()` refuses the rest.
Nothing here knows what a partner or a destination is; gateway/settings/tables.py does.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError

T = TypeVar("T")

_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_URL_RE = re.compile(r"^https?://[^/\s]+")


def read_document(path: Path) -> dict[str, Any]:
    """The parsed TOML file; a missing file or a syntax error is a ConfigError."""
    file = str(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(file, "(file)", "not found; pass --config FILE or set SWGW_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "(syntax)", str(exc)) from exc


class TableReader:
    """Reads one TOML table, checking types and remembering which keys were used.

    `where` is the table's key as errors name it ("server", "partners[0]", "" for the root).
    """

    def __init__(self, file: str, where: str, table: Any) -> None:
        self.file, self.where = file, where
        if not isinstance(table, Mapping):
            raise ConfigError(file, where, f"must be a table, got {type(table).__name__}")
        self.table: Mapping[str, Any] = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), reason)

    def get(self, name: str, kind: type[T], default: T | None = None, *, required: bool = False) -> T:
        self.used.add(name)
        if name not in self.table:
            if required or default is None:
                raise self.error(name, f"is required ({kind.__name__})")
            return default
        value = self.table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def opt(self, name: str, kind: type[T]) -> T | None:
        if name not in self.table:
            self.used.add(name)
            return None
        return self.get(name, kind, required=True)

    def positive(self, name: str, kind: type[T], default: T) -> T:
        value = self.get(name, kind, default)
        if value <= 0:  # type: ignore[operator]
            raise self.error(name, f"must be > 0, got {value!r}")
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A string or a list of strings, as a tuple."""
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, f"expected a string or list of strings, got {value!r}")
        return tuple(value)

    def one_of(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise self.error(name, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def ident(self, name: str) -> str:
        """A required id: 1-64 chars of [A-Za-z0-9._:-] (it ends up in queue names and logs)."""
        value = self.get(name, str, required=True)
        if not _ID_RE.match(value):
            raise self.error(name, f"{value!r} must be 1-64 chars of [A-Za-z0-9._:-]")
        return value

    def url(self, name: str, *, required: bool = True) -> str | None:
        """An http(s) URL; None when absent and not required."""
        value = self.get(name, str, required=True) if required else self.opt(name, str)
        if value is not None and not _URL_RE.match(value):
            raise self.error(name, f"{value!r} is not an http(s) URL")
        return value

    def statuses(self, name: str) -> tuple[int, ...]:
        """A list of HTTP status codes (100-599); empty when absent."""
        self.used.add(name)
        value = self.table.get(name, [])
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in value
        ):
            raise self.error(name, f"expected a list of HTTP status codes (100-599), got {value!r}")
        return tuple(value)

    def existing_file(self, name: str, base: Path) -> Path | None:
        """An existing file, relative to `base` (the config file's folder); None when absent."""
        value = self.opt(name, str)
        if value is None:
            return None
        path = (base / value).resolve()
        if not path.is_file():
            raise self.error(name, f"file {path} does not exist")
        return path

    def existing_files(self, name: str, base: Path) -> tuple[Path, ...]:
        """Existing files (a string or a list), relative to `base`."""
        paths = tuple((base / v).resolve() for v in self.strings(name, ()))
        for path in paths:
            if not path.is_file():
                raise self.error(name, f"file {path} does not exist")
        return paths

    def done(self) -> None:
        """Refuse any key that was not read: it is a typo or belongs elsewhere."""
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (a typo?)")


def table(doc: Mapping[str, Any], file: str, name: str) -> TableReader:
    """A reader of the optional top-level table `[name]` (empty when absent)."""
    return TableReader(file, name, doc.get(name, {}))


def tables(doc: Mapping[str, Any], file: str, name: str) -> list[TableReader]:
    """Readers of the array of tables `[[name]]`, each named `name[i]` in errors."""
    items = doc.get(name, [])
    if not isinstance(items, list):
        raise ConfigError(file, name, "must be an array of tables ([[" + name + "]])")
    return [TableReader(file, f"{name}[{i}]", t) for i, t in enumerate(items)]


def unique(file: str, name: str, ids: list[str]) -> None:
    """The first repeated id in `[[name]]` is an error naming its index."""
    seen: set[str] = set()
    for i, v in enumerate(ids):
        if v in seen:
            raise ConfigError(file, f"{name}[{i}].id", f"duplicate id {v!r}")
        seen.add(v)

"""Load a :class:`RunConfig` from TOML/YAML (a path or a bundled preset name) plus dotted overrides.

``thinkrec train ml100k-sasrec train.lr=0.002 model.hidden=128`` loads the preset, then applies each
``key.path=value`` (values parsed as YAML scalars/lists: ``true``, ``0.5``, ``[5,10]``). Errors name the
file and the dotted key, and suggest the nearest valid key for a typo.
"""

from __future__ import annotations

import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from thinkrec.config.schema import RunConfig
from thinkrec.errors import ConfigError


def preset_names() -> list[str]:
    folder = resources.files("thinkrec") / "presets"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: unknown config format; use a .toml, .yaml or .yml file")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of sections (data, model, train, eval)")
    return data


def resolve_config_path(name: str) -> Path:
    """A config file path, or the bundled preset of that name."""
    path = Path(name)
    if path.exists():
        return path
    preset = resources.files("thinkrec") / "presets" / f"{name}.toml"
    if preset.is_file():
        return Path(str(preset))
    close = difflib.get_close_matches(name, preset_names(), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Presets: {', '.join(preset_names())}."
    raise ConfigError(f"{name}: no such config file or preset.{hint}")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value, e.g. train.lr=0.001")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return data


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the section at ``loc`` (best effort, for suggestions)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = candidates[0] if candidates else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("sasrec",)))
        dotted = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            valid = _fields_at(RunConfig, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean '{'.'.join(str(p) for p in (*loc[:-1], close[0]))}'?" if close else ""
            lines.append(f"  {dotted}: unknown key{hint} (valid keys here: {', '.join(valid)})")
        elif err["type"] == "value_error":  # a cross-field check of a whole section: its message says it all
            lines.append(f"  {dotted or 'config'}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {dotted}: {err['msg']} (got {err.get('input')!r})")
    lines.append("  see every key with: thinkrec config show")
    return "\n".join(lines)


def load_config(name: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a config file or preset (or the defaults) and apply dotted overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if name:
        path = resolve_config_path(name)
        data = _read_file(path)
        source = str(path)
    data = apply_overrides(data, list(overrides or []))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        where = source + (f" (with overrides {' '.join(overrides)})" if overrides else "")
        raise ConfigError(format_validation_error(exc, where)) from None


def config_table(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """Rows ``(dotted key, default, description)`` for every leaf of the schema."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        sub = [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if sub:
            rows.append((key, "", (field.description or sub[0].__doc__ or "").strip().splitlines()[0]))
            rows.extend(config_table(sub[0], key + "."))
        else:
            default = (
                "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
            )
            rows.append((key, default, field.description or ""))
    return rows

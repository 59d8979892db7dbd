"""Load a config from TOML/YAML (a path or a bundled preset name) plus dotted overrides.

``thinkrec train ml100k-sasrec train.lr=0.002 model.hidden=128`` loads the preset, then applies each
``key.path=value`` (values parsed as YAML scalars/lists: ``true``, ``0.5``, ``[5,10]``). Errors name the
file and the dotted key, and suggest the nearest valid key for a typo.

A file may start from others: ``extends = ["protocols/ml100k-time", "methods/prl"]`` merges those files
(paths relative to this file, or bundled preset names) in order, then this file's own tables on top, so a
dataset protocol and a method are each written once. The same loader reads run configs
(:func:`load_config`) and any other config schema (:func:`load_into`, e.g. the LLM runs').
"""

from __future__ import annotations

import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from thinkrec.config.schema import RunConfig
from thinkrec.errors import ConfigError

Schema = TypeVar("Schema", bound=BaseModel)
EXTENDS = "extends"


def preset_names() -> list[str]:
    """The runnable presets (the building blocks in the presets' sub-folders are left out)."""
    folder = resources.files("thinkrec") / "presets"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def read_file(path: Path) -> dict[str, Any]:
    """One config file's tables, as written (``extends`` not followed)."""
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
    return anchor_paths(data, path.parent)


SOURCE_PATH_KEYS = ("path", "items_path")


def anchor_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Make the data files a config file names relative to its own folder absolute, so the config works
    from any working directory. A relative path with no such file next to the config is kept as written
    (looked up later under the data directory, as the presets' ``ml-100k`` is)."""
    section = data.get("data")
    source = section.get("source") if isinstance(section, dict) else None
    if not isinstance(source, dict):
        return data
    for key in SOURCE_PATH_KEYS:
        value = source.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            candidate = folder / value
            if candidate.exists():
                source[key] = str(candidate.resolve())
    return data


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` laid over ``base``: tables merge key by key, any other value of ``top`` replaces ``base``'s."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with everything it ``extends`` merged in (in order, the file's own tables last)."""
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ConfigError(f"{path}: '{EXTENDS}' goes round in a circle ({chain})")
    data = read_file(path)
    parents = data.pop(EXTENDS, [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: '{EXTENDS}' must be a file or preset name, or a list of them")
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = merge(merged, read_config(resolve_config_path(parent, path.parent), (*_seen, resolved)))
    return merge(merged, data)


def resolve_config_path(name: str, relative_to: Path | None = None) -> Path:
    """A config file path (relative to ``relative_to`` when given, else to the working folder), or the
    bundled preset (or preset building block, e.g. ``protocols/ml100k-time``) of that name."""
    for candidate in (relative_to / name, relative_to / f"{name}.toml") if relative_to is not None else ():
        if candidate.is_file():
            return candidate
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


def _members(annotation: Any) -> list[type[BaseModel]]:
    """The config classes a field may hold (one, or the members of a discriminated union)."""
    args = getattr(annotation, "__args__", ())
    if args and hasattr(annotation, "__metadata__"):  # Annotated[Union[...], Field(...)]
        return _members(args[0])
    return [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]


def _kind(member: type[BaseModel]) -> str | None:
    field = member.model_fields.get("kind")
    default = None if field is None else field.get_default()
    return default if isinstance(default, str) else None


def _walk(loc: tuple[Any, ...], root: type[BaseModel] = RunConfig) -> tuple[list[str], type[BaseModel] | None]:
    """Dotted key parts (discriminator tags dropped) and the config class of the section at ``loc``."""
    parts: list[str] = []
    current: type[BaseModel] | None = root
    members: list[type[BaseModel]] = []
    for part in loc:
        tagged = [m for m in members if _kind(m) == part]
        if tagged:  # pydantic puts the union member's tag into the location
            current, members = tagged[0], []
            continue
        parts.append(str(part))
        field = current.model_fields.get(str(part)) if current is not None else None
        members = _members(field.annotation) if field is not None else []
        current = members[0] if members else None
    return parts, current


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel] = RunConfig) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        parts, _ = _walk(tuple(err["loc"]), root)
        dotted = ".".join(parts)
        if err["type"] == "extra_forbidden":
            _, section = _walk(tuple(err["loc"])[:-1], root)
            valid = list(section.model_fields) if section is not None else []
            close = difflib.get_close_matches(parts[-1], valid, n=1)
            hint = f"; did you mean '{'.'.join((*parts[:-1], close[0]))}'?" if close else ""
            lines.append(f"  {dotted}: unknown key{hint} (valid keys here: {', '.join(valid)})")
        elif err["type"] == "value_error":  # a cross-field check of a whole section: its message says it all
            lines.append(f"  {dotted or 'config'}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {dotted}: {err['msg']} (got {err.get('input')!r})")
    if root is RunConfig:
        lines.append("  see every key with: thinkrec config show")
    return "\n".join(lines)


def load_into(
    schema: type[Schema], name: str | None = None, overrides: list[str] | None = None, presets: bool = True
) -> Schema:
    """Load a config file (or, with ``presets``, a bundled preset; or the defaults), follow its ``extends``,
    apply dotted overrides and validate against ``schema``: one error naming the file, every bad key and
    its fix."""
    data: dict[str, Any] = {}
    source = "defaults"
    if name:
        path = resolve_config_path(name) if presets else Path(name)
        data = read_config(path)
        source = str(path)
    data = apply_overrides(data, list(overrides or []))
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        where = source + (f" (with overrides {' '.join(overrides)})" if overrides else "")
        raise ConfigError(format_validation_error(exc, where, schema)) from None


def load_config(name: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config file or preset (or the defaults) and apply dotted overrides."""
    return load_into(RunConfig, name, overrides)


def config_table(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """Rows ``(dotted key, default, description)`` for every leaf of the schema; a section is a row with an
    empty default, and a section with several kinds (the model) is listed once per kind."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        members = _members(field.annotation)
        for member in members:
            doc = (field.description or member.__doc__ or "").strip().splitlines()[0]
            kind = _kind(member) if len(members) > 1 else None
            rows.append(
                (
                    key,
                    "",
                    f"kind = {kind!r}: {member.__doc__.strip().splitlines()[0]}" if kind and member.__doc__ else doc,
                )
            )
            rows.extend(config_table(member, key + "."))
        if not members:
            default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
            rows.append((key, default, field.description or ""))
    return rows

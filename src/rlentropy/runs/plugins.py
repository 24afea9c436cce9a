"""User code named by a config's `plugins:` list, imported before the config is validated.

    plugins: [my_rewards.py, mypkg.rewards]

Each entry is a Python file (it ends in ".py" or contains a "/") or a module name. A file is looked
up relative to the working directory, then next to the config file; the resolved config (a run's
config.yaml) records its absolute path, so `--resume`, `rlentropy eval` and the worker processes of
`study` / `demo` import the same file from anywhere. A module name is imported as it is (an installed
package), else from the working directory or the config file's directory.

Importing is what registers: a plugin calls `rlentropy.data.register_task`,
`rlentropy.rewards.register_reward`, or `rlentropy.algorithms.CONTROLS.register` (any registry of
`rlentropy.algorithms`) at import time, and the config then names what it registered (`data.task`,
`data.reward`, `algorithm.control`, ...). A plugin is imported once per process (a second config
naming it reuses the module). Every failure is one `ConfigError` line that names the plugin: a file
that does not exist, a module that cannot be found, or the exception its import raised, with the
plugin's own file and line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from rlentropy.errors import ConfigError

_LOADED: dict[str, ModuleType] = {}
"""Resolved entry (absolute file path or module name) → its module, for this process."""
REGISTERED: dict[str, list[str]] = {}
"""Resolved entry → what importing it registered ("reward my_reward", "task my_task", …)."""


def _registry_names() -> dict[str, set[str]]:
    from rlentropy.algorithms import ADVANTAGES, CONTROLLERS, CONTROLS, POLICY_LOSSES
    from rlentropy.data.tasks import _TASKS, available_tasks
    from rlentropy.rewards.registry import REWARDS

    available_tasks()  # the built-in tasks first, so that they are not counted as the plugin's
    names = {"task": set(_TASKS), "reward": set(REWARDS)}
    for reg in (ADVANTAGES, POLICY_LOSSES, CONTROLS, CONTROLLERS):
        names[reg.family] = set(reg.names())
    return names


def _added(before: dict[str, set[str]]) -> list[str]:
    after = _registry_names()
    return [f"{kind} {name}" for kind, names in after.items() for name in sorted(names - before.get(kind, set()))]


def is_file_entry(entry: str) -> bool:
    """True when a `plugins:` entry names a file rather than a module."""
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def _find_file(entry: str, base_dir: Path | None) -> Path:
    p = Path(entry).expanduser()
    places = [p] if p.is_absolute() else [Path.cwd() / p, *([base_dir / p] if base_dir is not None else [])]
    for cand in places:
        if cand.is_file():
            return cand.resolve()
    where = " or ".join(str(c.parent) for c in places)
    raise ConfigError(f"plugins: {entry!r}: no such file (looked in {where})")


def _origin(err: BaseException, path: str | None) -> str:
    """`file:line` of where the import failed: inside the plugin when it can be found there."""
    if isinstance(err, SyntaxError) and err.filename:
        return f"{err.filename}:{err.lineno}"
    frames = traceback.extract_tb(err.__traceback__)
    inside = [f for f in frames if path is not None and Path(f.filename).resolve() == Path(path)]
    frame = (inside or frames or [None])[-1]
    return f"{frame.filename}:{frame.lineno}" if frame is not None else "?"


def _import_failed(entry: str, err: BaseException, path: str | None) -> ConfigError:
    msg = str(err).splitlines()[0] if str(err) else ""
    what = f"{type(err).__name__}: {msg}" if msg else type(err).__name__
    return ConfigError(f"plugins: importing {entry!r} failed: {what} ({_origin(err, path)})")


def _load_file(entry: str, path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"_rlentropy_plugin_{path.stem.replace('-', '_')}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugins: {entry!r}: cannot be imported as a Python file ({path})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it executes
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any error of user code becomes one line naming the plugin
        sys.modules.pop(name, None)
        raise _import_failed(entry, err, str(path)) from err
    return module


def _load_module(entry: str, base_dir: Path | None) -> ModuleType:
    if not all(part.isidentifier() for part in entry.split(".")):
        raise ConfigError(f"plugins: {entry!r} is neither a Python file (*.py) nor a module name (a.b.c)")
    for attempt in range(2):
        try:
            return importlib.import_module(entry)
        except ModuleNotFoundError as err:
            top = entry.split(".")[0]
            missing = err.name or ""
            if not (missing == top or entry.startswith(missing + ".") or missing == entry):
                raise _import_failed(entry, err, None) from err  # the plugin imports something missing
            if attempt == 1:
                where = ", ".join(str(d) for d in _search_dirs(base_dir))
                raise ConfigError(
                    f"plugins: cannot import module {entry!r}: it is not installed and not found in {where}"
                ) from None
            for d in reversed(_search_dirs(base_dir)):
                if str(d) not in sys.path:
                    sys.path.insert(0, str(d))
            importlib.invalidate_caches()
        except Exception as err:  # noqa: BLE001 - any error of user code becomes one line naming the plugin
            origin = getattr(sys.modules.get(entry), "__file__", None)
            raise _import_failed(entry, err, origin) from err
    raise AssertionError("unreachable")


def _search_dirs(base_dir: Path | None) -> list[Path]:
    dirs = [Path.cwd().resolve()]
    if base_dir is not None and base_dir.resolve() not in dirs:
        dirs.append(base_dir.resolve())
    return dirs


def load_plugins(entries: Any, *, base_dir: str | Path | None = None) -> list[str]:
    """Import every plugin of a config's `plugins:` list (once per process); returns the entries resolved
    (files as absolute paths, module names unchanged), which is what the resolved config records.

    Args:
        entries: the `plugins:` value: None, one string, or a list of strings.
        base_dir: the config file's directory (files are looked up there after the working directory).

    Raises:
        ConfigError: a bad entry, a missing file or module, or an import that raised (one line naming
            the plugin, the exception and the plugin's file:line).
    """
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, str) and e.strip() for e in entries):
        raise ConfigError(f"plugins: must be a list of Python files or module names, got {entries!r}")
    base = Path(base_dir) if base_dir is not None else None
    resolved = []
    for raw in entries:
        entry = raw.strip()
        key = str(_find_file(entry, base)) if is_file_entry(entry) else entry
        if key not in _LOADED:
            before = _registry_names()
            _LOADED[key] = _load_file(entry, Path(key)) if is_file_entry(entry) else _load_module(entry, base)
            REGISTERED[key] = _added(before)
        resolved.append(key)
    return resolved

"""Experiment trackers: sinks that receive a run's settings and metrics beside ``log.jsonl``.

``train.trackers = ["tensorboard", "mlflow"]`` names them; each name is looked up in a registry, so user code
adds its own with :func:`register_tracker` (as objectives and metrics are added). A run tells every sink:

- :meth:`Tracker.start`: the run directory and every setting under its dotted key (``train.lr``), and
  whether the run starts anew or resumes;
- :meth:`Tracker.log_metrics`: each epoch's metrics at ``step = epoch`` (0-based, as in ``log.jsonl``), then
  the best checkpoint's test metrics at ``step = epochs trained``;
- :meth:`Tracker.close`: ``"finished"``, ``"failed"`` or ``"interrupted"`` (Ctrl-C), always, once.

Resuming: a run killed after an epoch's checkpoint but before its sinks heard of that epoch would miss it,
so a resumed run logs its last finished epoch again first, at :attr:`TrackedRun.first_step`. A sink whose
backend can drop earlier records drops its copies of every step from there on (TensorBoard's purge step);
the MLflow sink remembers what it logged and skips the repeats. Steps before ``first_step`` are never
logged again. A run that starts over (``train.resume=false``) removes every registered tracker's files from
the run directory first. Under torchrun only rank 0, the process that writes the run, tracks.

The settings of a tracker's backend are its own (MLflow reads ``MLFLOW_TRACKING_URI`` and
``MLFLOW_EXPERIMENT_NAME`` as it always does). The packages of the built-in sinks are optional extras:
``train.trackers`` naming one that is not installed fails when the config loads, before anything is written.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import logging
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from thinkrec.storage import atomic_write_json

log = logging.getLogger(__name__)

Status = Literal["finished", "failed", "interrupted"]


@dataclass(frozen=True)
class TrackedRun:
    """What every sink is told when the run starts."""

    run_dir: Path
    # every setting of the run under its dotted key, as the CLI's overrides name them (train.lr, eval.ks, ...)
    params: Mapping[str, Any]
    # False: a new run (a sink starts its records over); True: a run continuing from its last checkpoint
    resumed: bool = False
    # the first step this process logs: 0, or on resume the last finished epoch, logged again (see the module)
    first_step: int = 0


class Tracker(ABC):
    """One sink of a run's settings and metrics. Built by its factory, then started, told, closed."""

    @abstractmethod
    def start(self, run: TrackedRun) -> None:
        """Open the sink for ``run``: record its settings."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar ``metrics`` (keys like ``valid/NDCG@10``) at ``step``."""

    @abstractmethod
    def close(self, status: Status) -> None:
        """Flush and release the sink; ``status`` says how the run ended."""


TrackerFactory = Callable[[], Tracker]


@dataclass(frozen=True)
class TrackerSpec:
    """A registered sink: its factory, the modules it imports and how to install them, the files it keeps."""

    factory: TrackerFactory
    requires: tuple[str, ...] = ()
    install: str = ""  # the command that installs ``requires`` (default: pip install of the module names)
    outputs: tuple[str, ...] = ()  # files and folders it writes in the run directory

    def missing(self) -> list[str]:
        return [name for name in self.requires if not module_available(name)]


def module_available(name: str) -> bool:
    """Whether ``import name`` can find the module, without importing it (a module in ``sys.modules``,
    e.g. a test's stand-in, counts; ``sys.modules[name] = None`` blocks it, as it blocks the import)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


# ---------------------------------------------------------------------------------------------- registry
_registry: dict[str, TrackerSpec] = {}


def register_tracker(
    name: str,
    factory: TrackerFactory,
    *,
    requires: Sequence[str] = (),
    install: str | None = None,
    outputs: Sequence[str] = (),
    replace: bool = False,
) -> None:
    """Make ``train.trackers = [name]`` send the run to ``factory()``'s sink. ``requires``: the modules it
    imports, checked when a config naming it loads; ``install``: the command that installs them, for that
    error (default ``pip install <requires>``); ``outputs``: the files and folders it writes in the run
    directory, removed when a run starts over there (``train.resume=false``), so no record of the run before
    is continued."""
    if name in _registry and not replace:
        raise ValueError(f"a tracker named {name!r} is registered already (pass replace=True to replace it)")
    hint = install if install is not None else "pip install " + " ".join(requires)
    _registry[name] = TrackerSpec(factory, tuple(requires), hint, tuple(outputs))


def unregister_tracker(name: str) -> None:
    """Remove a registered tracker (the built-in ones cannot be removed)."""
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in tracker")
    _registry.pop(name, None)


def tracker_names() -> list[str]:
    return sorted(_registry)


def tracker_outputs() -> list[str]:
    """The files and folders every registered tracker writes in a run directory (see :func:`register_tracker`)."""
    return sorted({path for spec in _registry.values() for path in spec.outputs})


def check_trackers(names: Sequence[str]) -> None:
    """Raise :class:`ValueError` (which the config loader reports under ``train.trackers``) unless every name
    is registered once and its packages are installed: checked when a config loads, before anything is written."""
    for name in names:
        if name not in _registry:
            close = difflib.get_close_matches(name, tracker_names(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown tracker {name!r}; {hint}choose from {', '.join(tracker_names())}")
        if names.count(name) > 1:
            raise ValueError(f"{name!r} is named twice")
        missing = _registry[name].missing()
        if missing:
            raise ValueError(
                f"tracker {name!r} needs the Python package {', '.join(missing)}, which is not installed: "
                f"{_registry[name].install}"
            )


# ------------------------------------------------------------------------------------------- fan-out
class Trackers:
    """The started sinks of a run, each told everything in the order given. As a context manager it closes
    every sink on the way out: ``finished``, ``interrupted`` on KeyboardInterrupt, else ``failed``."""

    def __init__(self, sinks: Mapping[str, Tracker] | None = None) -> None:
        self.sinks = dict(sinks or {})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not metrics:
            return
        for sink in self.sinks.values():
            sink.log_metrics(metrics, step)

    def close(self, status: Status) -> None:
        """Close every sink, even when one of them fails to close; then raise the first such failure."""
        sinks, self.sinks = self.sinks, {}  # closed once, even if close is called again
        first: BaseException | None = None
        for name, sink in sinks.items():
            try:
                sink.close(status)
            except Exception as exc:
                log.warning("tracker %s: closing failed: %s", name, exc)
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close("finished")
            return
        status: Status = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
        # the run's own error is the one to report: a sink failing to close as well is only logged
        with contextlib.suppress(Exception):
            self.close(status)


NO_TRACKERS = Trackers()


def start_trackers(names: Sequence[str], run: TrackedRun) -> Trackers:
    """Build and start the named sinks (in order). If one fails to start, the ones started are closed as
    ``failed`` and the error is raised."""
    started = Trackers()
    try:
        for name in names:
            sink = _registry[name].factory()
            sink.start(run)
            started.sinks[name] = sink
            log.info("tracker %s: started%s", name, f" (resuming at step {run.first_step})" if run.resumed else "")
    except BaseException as exc:
        started.__exit__(type(exc), exc, exc.__traceback__)  # those started: closed as failed or interrupted
        raise
    return started


# ------------------------------------------------------------------------------------- built-in sinks
TENSORBOARD_DIR = "tensorboard"


class TensorBoardTracker(Tracker):
    """Event files in ``<run_dir>/tensorboard/`` (``tensorboard --logdir runs`` shows every run): a scalar per
    metric, and the settings as a text table. A new run finds no earlier files (a run starting over removes
    the folder); a resumed one writes a purge step, so TensorBoard hides the records of the steps logged again."""

    def __init__(self) -> None:
        self.writer: Any = None

    def start(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = run.run_dir / TENSORBOARD_DIR
        _after_earlier_files(folder)
        self.writer = SummaryWriter(str(folder), purge_step=run.first_step if run.resumed else None)
        rows = "\n".join(f"| {key} | {json.dumps(value)} |" for key, value in sorted(run.params.items()))
        self.writer.add_text("config", "| setting | value |\n|---|---|\n" + rows, global_step=run.first_step)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # an epoch's scalars are visible while the next epoch trains

    def close(self, status: Status) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _after_earlier_files(folder: Path) -> None:
    """TensorBoard reads a folder's event files in the order of their names, which start with the second their
    writer started (then host, process id, a counter): when an earlier file has the current second, wait for
    the next one, so the new file (and its purge step) sorts after it. Only runs shorter than a second wait."""
    stamps = [
        int(part) for part in (p.name.split(".")[3] for p in folder.glob("events.out.tfevents.*")) if part.isdigit()
    ]
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if wait > 0:
            time.sleep(wait)


MLFLOW_STATE = "mlflow.json"
# MLflow accepts these characters in metric and parameter names; '@' (NDCG@10) becomes '_'
_MLFLOW_NAME = re.compile(r"[^/\w.\- :]")
_MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def mlflow_name(key: str) -> str:
    """A metric or parameter key as MLflow accepts it: ``valid/NDCG@10`` -> ``valid/NDCG_10``."""
    return _MLFLOW_NAME.sub("_", key)


class MLflowTracker(Tracker):
    """One MLflow run per thinkrec run, through the ``mlflow`` module (its tracking URI and experiment as
    MLflow reads them from the environment). ``<run_dir>/mlflow.json`` keeps the MLflow run's id and the last
    step logged of every metric: a resumed run continues the same MLflow run and skips the steps it has
    logged. MLflow keeps a run's parameters fixed, so a resumed run logs only parameters it has not logged."""

    def __init__(self) -> None:
        self.mlflow: Any = None
        self.state_path = Path()
        self.state: dict[str, Any] = {}

    def start(self, run: TrackedRun) -> None:
        import mlflow

        self.mlflow = mlflow
        self.state_path = run.run_dir / MLFLOW_STATE
        saved = self._saved() if run.resumed else None
        nested = mlflow.active_run() is not None  # inside the caller's own MLflow run: a child run of it
        active = None
        if saved is not None:
            try:
                active = mlflow.start_run(run_id=saved["run_id"], nested=nested)
                self.state = saved
            except Exception as exc:  # e.g. another tracking URI than the one the run was started under
                log.warning(
                    "tracker mlflow: cannot continue MLflow run %s (%s); starting a new one", saved["run_id"], exc
                )
        if active is None:
            active = mlflow.start_run(run_name=run.run_dir.resolve().name, nested=nested)
            self.state = {"run_id": active.info.run_id, "params": [], "steps": {}}
        params = {mlflow_name(key): value for key, value in run.params.items()}
        new = {key: _param_value(value) for key, value in params.items() if key not in self.state["params"]}
        if new:
            mlflow.log_params(new)
            self.state["params"] = sorted([*self.state["params"], *new])
        self._save()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        steps: dict[str, int] = self.state["steps"]
        fresh = {}
        for key, value in metrics.items():
            name = mlflow_name(key)
            if step > steps.get(name, -1):  # a step logged before a resume is not logged twice
                fresh[name] = float(value)
                steps[name] = step
        if fresh:
            self.mlflow.log_metrics(fresh, step=step)
            self._save()

    def close(self, status: Status) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run(status=_MLFLOW_STATUS[status])
            self.mlflow = None

    def _saved(self) -> dict[str, Any] | None:
        """The state a previous start left, or None when there is none (a tracker turned on at a resume)."""
        try:
            state: object = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("run_id"), str)
            or not isinstance(state.get("params"), list)
            or not isinstance(state.get("steps"), dict)
        ):
            log.warning("%s: not a state this version wrote; starting a new MLflow run", self.state_path)
            return None
        return state

    def _save(self) -> None:
        atomic_write_json(self.state_path, self.state)


def _param_value(value: Any) -> str:
    """A setting as MLflow stores parameters (strings); lists and tables as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


# the built-in sinks: their packages are thinkrec's optional extras of the same names
register_tracker(
    "tensorboard",
    TensorBoardTracker,
    requires=["tensorboard"],
    install="pip install 'thinkrec[tensorboard]'",
    outputs=[TENSORBOARD_DIR],
)
register_tracker(
    "mlflow", MLflowTracker, requires=["mlflow"], install="pip install 'thinkrec[mlflow]'", outputs=[MLFLOW_STATE]
)
BUILTIN = frozenset(_registry)

"""Detectors by name, switched at runtime without a stalled frame.

A decision may ask for another model or input size at any time. Loading a model takes seconds,
far longer than a frame, so :class:`ModelPool` loads and warms requested models in the
background while the current one keeps serving, and holds at most ``max_loaded`` models.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
import threading
from typing import Callable

from adaptive_offload.errors import AdaptiveOffloadError, ConfigError
from edge_inference.detector import BackendOptions, DetectorBackend

Factory = Callable[[str, BackendOptions], DetectorBackend]
Spawn = Callable[[Callable[[], None]], None]


@dataclass(frozen=True)
class ModelSpec:
    """A model the edge node may use.

    Attributes:
        name: Name decisions use.
        backend: Backend registry name.
        path: Weights, model config or exported file.
    """

    name: str
    backend: str
    path: str


def parse_models(text: str, default_backend: str) -> list[ModelSpec]:
    """Parse ``name=path;name=path`` (the ``alt_models`` parameter).

    ``.onnx`` files use the ``onnx`` backend, anything else ``default_backend``.

    Raises:
        ConfigError: For an entry without ``=`` or a repeated name.
    """
    specs: list[ModelSpec] = []
    for entry in (e.strip() for e in text.split(';')):
        if not entry:
            continue
        name, sep, path = (p.strip() for p in entry.partition('='))
        if not sep or not name or not path:
            raise ConfigError(f'alt_models entry {entry!r} is not name=path')
        if any(s.name == name for s in specs):
            raise ConfigError(f'alt_models names {name!r} twice')
        backend = 'onnx' if Path(path).suffix == '.onnx' else default_backend
        specs.append(ModelSpec(name, backend, path))
    return specs


def _thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name='model-loader', daemon=True).start()


class ModelPool:
    """Loaded detectors, most recently used last; requested ones load in the background.

    Args:
        default: The model loaded at start (in the caller's thread: a node that cannot load its
            model should fail at start, not later).
        alternatives: Other models decisions may ask for.
        factory: Builds a backend (the backend registry's ``create_backend``).
        options: Device and settings folder shared by every model.
        max_loaded: Most models held in memory at once (>= 1).
        warm_up: Runs one inference on a new backend before it serves.
        spawn: Runs a loading job in the background (tests run it when they choose).

    Raises:
        ConfigError: If ``max_loaded`` < 1 or an alternative repeats the default's name.
        AdaptiveOffloadError: If the default model cannot be loaded.
    """

    def __init__(self, default: ModelSpec, alternatives: list[ModelSpec], factory: Factory,
                 options: BackendOptions, max_loaded: int = 2,
                 warm_up: Callable[[DetectorBackend], None] = lambda backend: None,
                 spawn: Spawn = _thread) -> None:
        if max_loaded < 1:
            raise ConfigError('max_loaded_models must be >= 1')
        if any(spec.name == default.name for spec in alternatives):
            raise ConfigError(f'alt_models repeats the default model name {default.name!r}')
        self._specs = {spec.name: spec for spec in [default, *alternatives]}
        self._factory = factory
        self._options = options
        self._max = max_loaded
        self._warm_up = warm_up
        self._spawn = spawn
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, DetectorBackend] = OrderedDict()
        self._loading: set[str] = set()
        self.errors: dict[str, str] = {}
        backend = self._build(default)
        self._loaded[default.name] = backend
        self._current = default.name

    @property
    def names(self) -> list[str]:
        """Every model name decisions may use."""
        return list(self._specs)

    @property
    def loaded(self) -> list[str]:
        """Models in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def names_of_current(self) -> dict[int, str]:
        """Class names of the model in use."""
        with self._lock:
            return self._loaded[self._current].names

    def _build(self, spec: ModelSpec) -> DetectorBackend:
        backend = self._factory(spec.backend, BackendOptions(spec.path, self._options.device,
                                                             self._options.config_dir))
        self._warm_up(backend)
        return backend

    def select(self, name: str) -> tuple[str, DetectorBackend, str]:
        """Return the backend to use for a frame whose decision asks for ``name``.

        Returns:
            The name and backend actually used, and a note when it is not the one asked for
            (unknown, still loading, or failed to load); the current model serves meanwhile.
        """
        with self._lock:
            if not name or name == self._current:
                return self._current, self._loaded[self._current], ''
            if name in self._loaded:
                self._loaded.move_to_end(name)
                self._current = name
                return name, self._loaded[name], ''
            current = self._current, self._loaded[self._current]
            if name not in self._specs:
                return (*current, f'model {name} not configured; used {current[0]}')
            if name in self.errors:
                return (*current, f'model {name} failed to load ({self.errors[name]}); '
                                  f'used {current[0]}')
            if name not in self._loading:
                self._loading.add(name)
                self._evict_for_one_more()
                self._spawn(lambda: self._load(name))
            return (*current, f'model {name} loading; used {current[0]}')

    def _evict_for_one_more(self) -> None:
        """Drop least recently used models (never the current one) to make room for one."""
        while len(self._loaded) + len(self._loading) > self._max and len(self._loaded) > 1:
            victim = next(n for n in self._loaded if n != self._current)
            del self._loaded[victim]

    def _load(self, name: str) -> None:
        try:
            backend = self._build(self._specs[name])
        except AdaptiveOffloadError as err:
            with self._lock:
                self._loading.discard(name)
                self.errors[name] = str(err)
            return
        with self._lock:
            self._loading.discard(name)
            self._loaded[name] = backend
            self._loaded.move_to_end(name, last=False)  # not used yet: first to go

"""Edge inference core: decode a frame, run the local detector under the current decision."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
import time
from typing import Any, Callable, Mapping, Protocol

from adaptive_offload.admission import EveryNth
from adaptive_offload.conversions import image_to_frame, stamp_to_ns
from adaptive_offload.datatypes import Decision, DetectionSet, InferenceReport
from adaptive_offload.errors import BackendError, ConfigError, ConversionError
from adaptive_offload.frame_worker import DecisionHolder, Emit, FrameProcessor, FrameWorker
from adaptive_offload.graph import SPLIT_ROLES
from adaptive_offload.params import ParameterSpec, ParamValue, resolve
from adaptive_offload.tensor_codec import ENCODINGS
from adaptive_offload.tensor_compression import COMPRESSORS
from edge_inference.backends import create_backend
from edge_inference.detector import BackendOptions, class_indices, DetectorBackend
from edge_inference.model_pool import Factory, ModelPool, ModelSpec, parse_models
from fault_injection.live import ObeyedFaults, StallingProcessor
import numpy as np

PARAMETERS = (
    ParameterSpec('backend', 'ultralytics', 'Detector backend (registry name).', configure=True),
    ParameterSpec('model', 'yolov8n.pt',
                  'Weights file (.pt) or model config (.yaml: random weights, for tests).',
                  configure=True),
    ParameterSpec('model_name', '', 'Name decisions use for this model; empty: file stem.',
                  configure=True),
    ParameterSpec('device', 'cpu', 'Inference device: cpu, cuda, cuda:N or mps.',
                  configure=True),
    ParameterSpec('imgsz', 640, 'Input size used while no decision sets one.', live=True,
                  minimum=32, maximum=4096),
    ParameterSpec('conf', 0.25, 'Minimum detection confidence.', live=True, minimum=0.0,
                  maximum=1.0),
    ParameterSpec('iou', 0.7, 'NMS IoU threshold.', live=True, minimum=0.0, maximum=1.0),
    ParameterSpec('max_det', 100, 'Most detections per frame.', live=True, minimum=1,
                  maximum=10000),
    ParameterSpec('classes', '', 'Comma-separated class names to keep; empty keeps all.',
                  configure=True),
    ParameterSpec('image_topic', '/camera/image_raw', 'Camera topic (sensor_msgs/Image).',
                  configure=True),
    ParameterSpec('compressed', False,
                  'Subscribe to <image_topic>/compressed (sensor_msgs/CompressedImage).',
                  configure=True),
    ParameterSpec('source_name', 'edge', 'Name of this target in records (e.g. robot, pi).',
                  configure=True),
    ParameterSpec('deadline_ms', 250.0, 'Deadline applied while no decision is valid.',
                  live=True, minimum=1.0, maximum=60000.0),
    ParameterSpec('ultralytics_config_dir', '', 'ultralytics settings folder; empty: default.',
                  configure=True),
    ParameterSpec('alt_models', '',
                  'Other models decisions may ask for: name=path;name=path (.onnx: onnx).',
                  configure=True),
    ParameterSpec('max_loaded_models', 2, 'Most models held in memory at once.', configure=True,
                  minimum=1, maximum=16),
    ParameterSpec('publish_annotated', False,
                  'Also publish edge/annotated (Image with the boxes) for rviz.', configure=True),
    ParameterSpec('autostart', True,
                  'Configure and activate the lifecycle node at start (plain launches).'),
    ParameterSpec('obey_faults', False,
                  'Obey edge stalls announced on /health/faults (a fault rehearsal).',
                  configure=True),
    ParameterSpec('split_role', '',
                  "'': the whole detector; head: layers [0, split_point) on the camera, "
                  'published on split_topic; tail: the rest, on what split_topic brings.',
                  configure=True),
    ParameterSpec('split_point', 0,
                  'k of a split role: the head runs layers [0, k), the tail [k, end) (1..22 '
                  'for YOLOv8n); a tail at 0 runs from whatever point each message names, '
                  'so the head alone chooses k; a head at 0 runs the whole detector unless '
                  "the manager's decision names a split of it.", configure=True, minimum=0,
                  maximum=1000),
    ParameterSpec('split_encoding', 'fp16+zstd',
                  "A head's crossing tensors on the wire: fp32, fp16 or int8, then +zstd, "
                  '+lz4 or +none.', configure=True),
    ParameterSpec('split_topic', 'edge/split',
                  "A head's output (relative: in its namespace); a tail's input, absolute "
                  "(the head's, e.g. /robot/edge/split).", configure=True),
    ParameterSpec('split_max_bytes', 64 * 1024 * 1024,
                  "A tail's bound on the bytes a message's tensors decode to (float32).",
                  configure=True, minimum=1024, maximum=2**31 - 1),
)

LIVE = frozenset(spec.name for spec in PARAMETERS if spec.live)


@dataclass(frozen=True)
class EdgeConfig:
    """Validated edge parameters (see :data:`PARAMETERS`)."""

    backend: str
    model: str
    model_name: str
    device: str
    imgsz: int
    conf: float
    iou: float
    max_det: int
    classes: str
    image_topic: str
    compressed: bool
    source_name: str
    deadline_ms: float
    ultralytics_config_dir: str
    alt_models: str
    max_loaded_models: int
    publish_annotated: bool
    autostart: bool
    obey_faults: bool
    split_role: str
    split_point: int
    split_encoding: str
    split_topic: str
    split_max_bytes: int

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None = None) -> EdgeConfig:
        """Build from parameter values over the defaults.

        Raises:
            ConfigError: For unknown names or wrong types, or split parameters that do not fit
                together (see :meth:`check_split`).
        """
        params = resolve(PARAMETERS, values)
        if not params['model_name']:
            params['model_name'] = Path(params['model']).stem
        config = cls(**params)
        config.check_split()
        return config

    @property
    def split_precision(self) -> str:
        """The precision of ``split_encoding`` (``fp32``, ``fp16`` or ``int8``)."""
        return self.split_encoding.partition('+')[0]

    @property
    def split_codec(self) -> str:
        """The compression of ``split_encoding`` (``zstd``, ``lz4`` or ``none``)."""
        return self.split_encoding.partition('+')[2]

    def check_split(self) -> None:
        """Check the split parameters against each other (the model's points: on load).

        Raises:
            ConfigError: For an unknown role or encoding, a role without a split point, a
                tail whose topic is relative, or what a split role cannot do (another backend,
                alternative models, annotated images).
        """
        role = self.split_role
        if role not in SPLIT_ROLES:
            raise ConfigError(f"split_role {role!r}: '' (the whole detector), head or tail")
        if self.split_precision not in ENCODINGS or self.split_codec not in COMPRESSORS:
            raise ConfigError(f'split_encoding {self.split_encoding!r}: <precision>+<codec> '
                              f'with precision {"/".join(ENCODINGS)} and codec '
                              f'{"/".join(COMPRESSORS)}, e.g. fp16+zstd')
        if not role:
            return
        if role == 'tail' and not self.split_topic.startswith('/'):
            raise ConfigError(f'split_topic {self.split_topic!r} of a tail must be absolute: '
                              "the head's topic, e.g. /robot/edge/split")
        if self.backend != 'ultralytics' or self.alt_models or self.publish_annotated:
            raise ConfigError(f'split_role {role} runs one ultralytics model and draws nothing: '
                              'set backend ultralytics, alt_models "" and publish_annotated '
                              'false')

    def fallback_decision(self) -> Decision:
        """Decision applied while the manager gives none: this model, locally."""
        return Decision.safe_default(self.model_name, self.imgsz, self.deadline_ms)

    def default_model(self) -> ModelSpec:
        """Return the model loaded at start."""
        return ModelSpec(self.model_name, self.backend, self.model)


class EdgeCore(FrameProcessor, Protocol):
    """What the edge node and the replay drive: the whole detector or a split role's part."""

    config: EdgeConfig

    def reconfigure(self, values: Mapping[str, Any]) -> EdgeConfig:
        """Apply live parameters (see :func:`reconfigured`) and return the new config."""

    def class_names(self) -> dict[int, str]:
        """Class index to name of the model in use (the label map)."""


def reconfigured(config: EdgeConfig, values: Mapping[str, Any]) -> EdgeConfig:
    """Return ``config`` with parameters set at runtime (thresholds, fallback size, deadline).

    Raises:
        ConfigError: For a parameter that is not live or a wrong value.
    """
    fixed = sorted(name for name in values if name not in LIVE)
    if fixed:
        raise ConfigError(f'{", ".join(fixed)}: read on configure, not at runtime')
    return EdgeConfig.from_params({**dataclasses.asdict(config), **values})


def launch_argument(name: str, text: str) -> ParamValue:
    """Read a launch argument's text as the parameter of that name (``edge.launch.py``).

    Args:
        name: A parameter of :data:`PARAMETERS` (``split_point``...).
        text: The argument as given (``split_point:=4``).

    Raises:
        ConfigError: Naming the argument, for text that is not a value of the parameter's
            type or is out of its range.
    """
    spec = next((s for s in PARAMETERS if s.name == name), None)
    kinds = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'text'}
    kind = type(spec.default) if spec is not None else None
    if spec is None or kind not in kinds:
        raise ConfigError(f'launch argument {name}: not a scalar edge_inference parameter')
    try:
        if kind is bool:
            value: ParamValue = {'true': True, 'false': False}[text.strip().lower()]
        else:
            value = kind(text.strip()) if kind in (int, float) else text
    except (KeyError, ValueError):
        raise ConfigError(f'launch argument {name}:={text!r}: expected {kinds[kind]} '
                          f'({spec.description})') from None
    try:
        return spec.check(value)
    except ConfigError as err:
        raise ConfigError(f'launch argument {name}:={text!r}: {err}') from None


def build_edge(config: EdgeConfig, factory: Factory = create_backend) -> EdgeInference:
    """Load the default model (warmed up) and make the edge core.

    Raises:
        ConfigError: For bad alternatives or a class filter the model does not know.
        BackendError: If the default model cannot be loaded.
    """
    def warm_up(backend: DetectorBackend) -> None:
        backend.infer(np.zeros((480, 640, 3), np.uint8), config.imgsz, config.conf,
                      config.iou, None, 1)

    pool = ModelPool(config.default_model(), parse_models(config.alt_models, config.backend),
                     factory, BackendOptions('', config.device, config.ultralytics_config_dir),
                     config.max_loaded_models, warm_up)
    return EdgeInference(config, pool)


def edge_worker(core: EdgeCore, decisions: DecisionHolder, emit: Emit,
                clock: Callable[[], int], faults: ObeyedFaults | None = None) -> FrameWorker:
    """Make the worker that runs ``core`` on the newest frame, in the node and in the replay.

    Args:
        core: The edge core.
        decisions: The latest decision for this source.
        emit: Publishes its results and reports.
        clock: Nanosecond clock (ROS time in the node).
        faults: Obeyed faults; an announced edge stall then stalls the worker.
    """
    processor: FrameProcessor = core if faults is None else StallingProcessor(core, faults)
    return FrameWorker(processor, decisions, emit, clock)


class EdgeInference:
    """Runs the local detector on frames.

    Args:
        config: Parameters.
        models: The detectors (see :func:`build_edge`).
        clock: Monotonic nanosecond clock for timings (injected in tests).

    Raises:
        ConfigError: If ``classes`` names a class the default model does not have.
    """

    def __init__(self, config: EdgeConfig, models: ModelPool,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.config = config
        self.models = models
        self._clock = clock
        self._classes: dict[str, tuple[int, ...] | None] = {}
        self._probes = EveryNth()  # off the edge route, every probe_every-th frame runs here
        self._class_filter(*models.select('')[:2])

    def reconfigure(self, values: Mapping[str, Any]) -> EdgeConfig:
        """Apply parameters set at runtime (thresholds, the fallback size and deadline).

        The next frame is processed with them; what needs a reload (model, device...) is read
        on the next lifecycle configure instead.

        Raises:
            ConfigError: For a parameter that is not live or a wrong value; nothing changes.
        """
        self.config = reconfigured(self.config, values)
        return self.config

    def class_names(self) -> dict[int, str]:
        """Class names of the model in use."""
        return self.models.names_of_current()

    def _class_filter(self, name: str, backend: DetectorBackend) -> tuple[int, ...] | None:
        if name not in self._classes:
            self._classes[name] = class_indices(backend.names, self.config.classes)
        return self._classes[name]

    def drop(self, stamp_ns: int, frame_id: str, reason: str,
             decision: Decision) -> InferenceReport:
        """Report a frame that was not processed (see :class:`FrameProcessor`)."""
        return InferenceReport(stamp_ns=stamp_ns, frame_id=frame_id,
                               source=self.config.source_name, status='dropped', reason=reason,
                               model=self.config.model_name, decision_seq=decision.seq)

    def process(self, msg: Any, decision: Decision,
                waited_ns: int = 0) -> tuple[DetectionSet | None, InferenceReport]:
        """Decode and detect one image message (see :class:`FrameProcessor`).

        The edge runs every frame it takes, however long it waited (``waited_ns``): the
        frame's lateness shows in its record, and a late local answer still counts.

        Returns:
            The detections (None when skipped or failed) and the report.
        """
        start = self._clock()
        stamp_ns, frame_id = stamp_to_ns(msg.header.stamp), str(msg.header.frame_id)
        report = InferenceReport(stamp_ns=stamp_ns, frame_id=frame_id,
                                 source=self.config.source_name, model=self.config.model_name,
                                 decision_seq=decision.seq)
        if not decision.route.uses_edge and not self._probes.pick(decision.probe_every):
            return None, replace(report, status='skipped', reason=f'route={decision.route.value}')
        imgsz = decision.edge_imgsz if decision.edge_imgsz > 0 else self.config.imgsz
        name, backend, note = self.models.select(decision.edge_model)
        report = replace(report, model=name)
        try:
            frame = image_to_frame(msg)
            classes = self._class_filter(name, backend)
            infer_start = self._clock()
            dets = backend.infer(frame.image, imgsz, self.config.conf, self.config.iou,
                                 classes, self.config.max_det)
        except ConversionError as err:
            return None, replace(report, status='failed', reason=str(err), imgsz=imgsz,
                                 total_ms=_ms(self._clock() - start))
        except (BackendError, ConfigError) as err:
            return None, replace(report, status='failed', reason=f'inference_error: {err}',
                                 imgsz=imgsz, total_ms=_ms(self._clock() - start))
        end = self._clock()
        result = DetectionSet(stamp_ns=stamp_ns, frame_id=frame_id,
                              source=self.config.source_name, detections=dets, model=name)
        return result, replace(report, reason=note, imgsz=imgsz, detections=len(dets),
                               inference_ms=_ms(end - infer_start), total_ms=_ms(end - start))


def _ms(ns: int) -> float:
    return ns / 1e6

"""Split options: the cloud model cut after a stage, its head on the robot and tail in the cloud.

An option is named ``<arch>@<imgsz>:<point>:<encoding>`` (:mod:`adaptive_offload.split_option`,
e.g. ``fasterrcnn_mobilenet_v3_small_fpn@640:body.2:int8+zstd``). What one frame costs on it comes
from three sources: the robot's head time and the cloud's tail time (``split_ms`` of the
device profiles, ``config/devices.yaml``), and the payload bytes with their encode and decode
times (a trained model's ``adaptive-offload profile --out`` file,
``config/split_payloads/<arch>.yaml``): bytes belong to the model and the frame, not to a
device. A learned option (``<arch>@<imgsz>:<point>:bottleneck``) sends a learned bottleneck's
code: its bytes and times are the point's ``bottleneck`` entry there (``profile --bottleneck``),
its accuracy cost :data:`LEARNED_MAP_LOSS`.

A three-tier option (``<arch>@<imgsz>:<i>/<j>:<encoding>``) adds a middle device on the robot's
LAN: the robot's head to ``i`` and its payload over the LAN, the middle device's decode, layers
``i`` to ``j`` (its ``split_ms``) and encode, then the payload of ``j`` over the uplink to the
cloud's tail; ``j = end`` leaves the rest to the middle device and sends nothing to the cloud.

The edge detector splits too, between the robot and the middle device only:
``<model>@<imgsz>:<k>/end:<encoding>`` (``yolov8n-shapes@320:4/end:int8+zstd``), its payload
file ``family: yolo`` (``profile models/yolov8n-shapes.pt --imgsz 320 --out ...``), one per input
size (``config/split_payloads/<model>@<imgsz>.yaml``). Its figures say ``edge``: the option is
the robot's edge route, its answer an edge answer (``edge_inference``'s split head and tail).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import math
from pathlib import Path
from typing import Mapping, Sequence

from adaptive_offload.errors import ConfigError
from adaptive_offload.package_files import shipped_config
from adaptive_offload.split_option import check_order, LEARNED, parse_spec, SplitSpec
from adaptive_offload.yaml_files import read_yaml
from offload_manager.energy import DeviceProfile

QUANTISATION_MAP_LOSS = {'fp16': 0.0, 'int8': 0.0}
"""mAP points (0-100) a wire precision costs the cloud model, measured at every split point of
the shipped compact model (``benchmarks/bench_bottleneck.py --points all``, docs/models.md):
fp16 none; int8 (per channel) at most 0.2 points (51.2 to 51.5 against 51.4 unsplit on 60
held-out frames), within what the run can tell apart, so none here either."""
LEARNED_MAP_LOSS = 4.7
"""mAP points (0-100) the shipped learned bottleneck (``models/rcnn-shapes-bottleneck.pt``, 2
channels after ``body.3``; :data:`adaptive_offload.split_option.LEARNED`) costs the cloud
model: 48.5 all-difficulty mAP against 53.2 for the unsplit frame and its q50 JPEG, on 60
held-out frames per difficulty at score 0.01 (``benchmarks/bench_bottleneck.py``, docs/models.md,
"A learned bottleneck at a split of the cloud model"). Its payload figures are the
``bottleneck`` entry of the point's ``wire`` in the payload file (``profile --bottleneck``)."""

EDGE_SPLIT_MAP_LOSS = 0.0
"""mAP points a wire precision costs the edge detector: none measurable. On one machine its split
boxes stay within 0.003 px (fp16) and 0.08 px (int8) of the unsplit model's, with the same
detections (``test/edge_inference/test_split_roles.py``)."""
FAMILIES = ('rcnn', 'yolo')
"""Model families of payload files: the cloud R-CNN, the edge YOLO."""


@dataclass(frozen=True)
class SplitFigures:
    """What one frame costs on a split option.

    Attributes:
        spec: The option.
        head_ms: Robot time of the layers before the cut.
        encode_ms: Robot time to quantise and compress the payload (a learned bottleneck's
            encoder included).
        payload_bytes: Request bytes.
        tail_ms: Cloud time of the layers after the cut.
        decode_ms: Cloud time to decompress the payload (and run a bottleneck's decoder).
        map_loss: mAP points the encoding costs (its precision, or a learned bottleneck).
        jpeg_bytes: The same frame's JPEG bytes by quality (the payload file's reference).
        lan_ms: Three-tier: the payload's transfer to the middle device with the LAN's round
            trip (by the configured LAN rate).
        middle_ms: Three-tier: the middle device's decode, layers ``i`` to ``j`` and encode.
        middle_j: Three-tier: what the middle device draws over ``middle_ms`` (its compute
            power), for totals that count every device.
        onward_bytes: Three-tier: bytes the middle device sends the cloud (0 for ``j = end``);
            None on two tiers, where the robot's payload goes to the cloud.
        edge: The edge detector's split (robot head, middle device tail): an edge route.
    """

    spec: SplitSpec
    head_ms: float
    encode_ms: float
    payload_bytes: int
    tail_ms: float
    decode_ms: float
    map_loss: float
    jpeg_bytes: Mapping[int, int]
    lan_ms: float = 0.0
    middle_ms: float = 0.0
    middle_j: float = 0.0
    onward_bytes: int | None = None
    edge: bool = False

    @property
    def wan_bytes(self) -> int:
        """Bytes that cross the uplink to the cloud."""
        return self.payload_bytes if self.onward_bytes is None else self.onward_bytes

    @property
    def to_cloud(self) -> bool:
        """Whether the cloud runs part of the model."""
        return self.spec.to_cloud

    @property
    def before_wan_ms(self) -> float:
        """Time from the frame to the uplink: robot, then LAN and middle device on three tiers."""
        return self.robot_ms + self.lan_ms + self.middle_ms

    @property
    def robot_ms(self) -> float:
        """Robot compute time per frame: head and encode."""
        return self.head_ms + self.encode_ms

    @property
    def server_ms(self) -> float:
        """Cloud compute time per frame: decode and tail."""
        return self.decode_ms + self.tail_ms


def default_payloads_file(arch: str, imgsz: int = 0) -> Path:
    """Return the shipped payload figures of ``arch``: at ``imgsz`` if measured there, else any.

    That is ``config/split_payloads/<arch>@<imgsz>.yaml`` where it exists, else
    ``config/split_payloads/<arch>.yaml``.
    """
    if imgsz:
        sized = shipped_config('split_payloads', f'{arch}@{imgsz}.yaml')
        if sized.is_file():
            return sized
    return shipped_config('split_payloads', f'{arch}.yaml')


Payloads = dict[str, dict[str, tuple[int, float, float]]]
"""Payload figures: ``{point: {encoding: (bytes, encode_ms, decode_ms)}}``."""


@dataclass(frozen=True)
class PayloadFile:
    """A profile file's payload figures (``adaptive-offload profile --out``).

    Attributes:
        points: ``{point: {encoding: (bytes, encode_ms, decode_ms)}}``.
        jpeg: The profiled frame's JPEG bytes by quality.
        model: ``model@imgsz`` measured (empty when the file does not say).
        family: ``rcnn`` (the cloud model) or ``yolo`` (the edge detector).
    """

    points: Payloads
    jpeg: dict[int, int]
    model: str = ''
    family: str = 'rcnn'


def load_payloads(path: str | Path) -> tuple[Payloads, dict[int, int]]:
    """Read a profile file's payload figures and its JPEG bytes by quality.

    Raises:
        ConfigError: Naming the file and the entry at fault.
    """
    found = load_payload_file(path)
    return found.points, found.jpeg


def load_payload_file(path: str | Path) -> PayloadFile:
    """Read a profile file: its payload figures, JPEG bytes, model and family.

    Raises:
        ConfigError: Naming the file and the entry at fault.
    """
    data = read_yaml(path, 'split payload figures')
    if not isinstance(data, dict) or not isinstance(data.get('points'), list):
        raise ConfigError(f'{path}: expected a profile with a list "points"')
    family = str(data.get('family') or 'rcnn')
    if family not in FAMILIES:
        raise ConfigError(f'{path}: family {family!r} is not one of {", ".join(FAMILIES)}')
    jpeg = data.get('jpeg_bytes') or {}
    try:
        qualities = {int(str(q).lstrip('q')): int(b) for q, b in jpeg.items()}
    except (AttributeError, TypeError, ValueError) as err:
        raise ConfigError(f'{path}: jpeg_bytes must map qNN to bytes') from err
    points: Payloads = {}
    for entry in data['points']:
        if not isinstance(entry, dict) or not isinstance(entry.get('wire'), dict):
            raise ConfigError(f'{path}: point {entry!r} lacks a "wire" mapping')
        name = str(entry.get('name'))
        points[name] = {}
        for encoding, fig in entry['wire'].items():
            where = f'{path}: point {name} {encoding}'
            if not isinstance(fig, dict):
                raise ConfigError(f'{where}: expected bytes, encode_ms, decode_ms')
            raw = [fig.get(k) for k in ('bytes', 'encode_ms', 'decode_ms')]
            values = [float(v) for v in raw if not isinstance(v, bool) and
                      isinstance(v, (int, float)) and math.isfinite(v) and v >= 0]
            if len(values) != 3:
                raise ConfigError(f'{where}: bytes, encode_ms, decode_ms must be non-negative '
                                  f'numbers, got {raw}')
            points[name][str(encoding)] = (int(values[0]), values[1], values[2])
    return PayloadFile(points, qualities, str(data.get('model') or ''), family)


def split_figures(specs: Sequence[str], robot: DeviceProfile, cloud: DeviceProfile,
                  payload_files: Mapping[str, str | Path] | None = None,
                  middle: DeviceProfile | None = None, lan_mbps: float = 100.0,
                  lan_rtt_ms: float = 2.0) -> dict[str, SplitFigures]:
    """Figures of every split option, from the device profiles and the payload files.

    Args:
        specs: Option names (``arch@imgsz:point:encoding`` or ``arch@imgsz:i/j:encoding``).
        robot: Robot profile (head times).
        cloud: Cloud profile (tail times).
        payload_files: Payload file by architecture; by default the shipped ones.
        middle: The middle device of three-tier options; None: none (they are refused).
        lan_mbps: Robot-to-middle LAN rate.
        lan_rtt_ms: Robot-to-middle round trip.

    Returns:
        Figures by option name.

    Raises:
        ConfigError: If an option is malformed, its cuts out of order, or a figure it needs
            is missing.
    """
    payloads: dict[tuple[str, int], PayloadFile] = {}
    out = {}
    for text in specs:
        spec = parse_spec(text)
        key = (spec.arch, spec.imgsz)
        if key not in payloads:
            path = (payload_files or {}).get(spec.arch) or \
                default_payloads_file(spec.arch, spec.imgsz)
            payloads[key] = _payloads_for(text, spec, path)
        found = payloads[key]
        points = found.points
        if spec.three_tier:
            check_order(spec, list(points))
        wire = _wire(text, spec, points, spec.point)
        head = _times(text, spec, robot, spec.point)
        edge = found.family == 'yolo'
        fig = SplitFigures(spec, head[0], wire[1], wire[0], 0.0, 0.0,
                           EDGE_SPLIT_MAP_LOSS if edge else encoding_map_loss(spec), found.jpeg,
                           edge=edge)
        if spec.three_tier:
            if middle is None:
                raise ConfigError(f'split option {text!r}: three tiers need a middle device '
                                  '(split_middle_device)')
            fig = _middle(text, fig, points, middle, wire, lan_mbps, lan_rtt_ms)
        if spec.to_cloud:
            last = spec.middle_to if spec.three_tier else spec.point
            tail = _times(text, spec, cloud, last)[1]
            fig = replace(fig, tail_ms=tail, decode_ms=_wire(text, spec, points, last)[2])
        out[spec.key] = fig
    return out


def _payloads_for(text: str, spec: SplitSpec, path: str | Path) -> PayloadFile:
    """Read an option's payload file; refuse one measured at another size or family's form."""
    if not Path(path).is_file():
        raise ConfigError(f'split option {text!r}: no payload figures for {spec.arch}@'
                          f'{spec.imgsz} ({path}); measure them with adaptive-offload profile '
                          f'MODEL --imgsz {spec.imgsz} --out FILE')
    found = load_payload_file(path)
    if found.model and found.model != f'{spec.arch}@{spec.imgsz}':
        raise ConfigError(f'split option {text!r}: its payload file {path} measured '
                          f'{found.model}, not {spec.arch}@{spec.imgsz} (adaptive-offload '
                          f'profile ... --imgsz {spec.imgsz} --out FILE)')
    if found.family == 'yolo' and not (spec.three_tier and not spec.to_cloud):
        raise ConfigError(f'split option {text!r}: an edge detector splits between the robot '
                          f'and an edge computer only: {spec.arch}@{spec.imgsz}:<k>/end:'
                          f'{spec.encoding}')
    return found


def encoding_map_loss(spec: SplitSpec) -> float:
    """Return the mAP points an option's encoding costs the cloud model (measured, see above)."""
    return LEARNED_MAP_LOSS if spec.learned else QUANTISATION_MAP_LOSS[spec.precision]


def _middle(text: str, fig: SplitFigures, points: Payloads, middle: DeviceProfile,
            wire: tuple[int, float, float], lan_mbps: float, lan_rtt_ms: float
            ) -> SplitFigures:
    """Add the LAN and the middle device's part to a three-tier option's figures."""
    spec = fig.spec
    start = _times(text, spec, middle, spec.point)
    if spec.to_cloud:
        onward = _wire(text, spec, points, spec.middle_to)
        # Heads run from the input: the layers between the cuts are the difference of two.
        compute = max(0.0, _times(text, spec, middle, spec.middle_to)[0] - start[0])
        nbytes, encode = onward[0], onward[1]
    else:
        compute, nbytes, encode = start[1], 0, 0.0
    middle_ms = wire[2] + compute + encode
    return replace(fig, lan_ms=wire[0] * 8 / (lan_mbps * 1e3) + lan_rtt_ms, middle_ms=middle_ms,
                   middle_j=middle.compute_w * middle_ms / 1e3, onward_bytes=nbytes)


def _wire(text: str, spec: SplitSpec, points: Payloads, point: str) -> tuple[int, float, float]:
    """Return ``(bytes, encode_ms, decode_ms)`` of the payload at ``point``."""
    wire = points.get(point, {}).get(spec.encoding)
    if wire is None and spec.learned:
        raise ConfigError(f'split option {text!r}: the payload file has no {LEARNED} entry '
                          f'for point {point!r} (a learned bottleneck measured there: '
                          f'adaptive-offload profile ... --bottleneck FILE --out FILE)')
    if wire is None:
        raise ConfigError(f'split option {text!r}: no payload {spec.encoding} for point '
                          f'{point!r} in its payload file')
    return wire


def _times(text: str, spec: SplitSpec, device: DeviceProfile, point: str) -> tuple[float, float]:
    """Return ``(head_ms, tail_ms)`` of the option's model cut at ``point`` on ``device``."""
    times = device.split_time_ms(spec.arch, spec.imgsz, point)
    if times is None:
        raise ConfigError(f'split option {text!r}: no time for point {point!r} of '
                          f'{spec.arch}@{spec.imgsz} in device {device.name} split_ms')
    return times

"""Names of split options: the cloud model cut after a stage, its head on the robot.

An option is named ``<arch>@<imgsz>:<point>:<encoding>``, e.g.
``fasterrcnn_mobilenet_v3_small_fpn@640:body.2:int8+zstd``; a three-tier option
``<arch>@<imgsz>:<i>/<j>:<encoding>`` cuts it twice: the robot runs up to ``i``, a middle
device (an edge computer on the robot's LAN) from ``i`` to ``j``, the cloud the rest; ``j``
``end`` leaves the whole rest to the middle device and nothing to the cloud. The manager
estimates options by these names (``offload_manager.split_figures``), decisions carry them
(``Decision.split``), and the bridge runs the head they name (``cloud_bridge.split_head``;
three tiers through the middle device's service, ``rcnn_service.middle_part``): one parser for
all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from adaptive_offload.errors import ConfigError
from adaptive_offload.tensor_compression import COMPRESSORS

SPLIT_PREFIX = 'split:'
"""A cloud report of a split request names its option as ``split:<option>`` in ``model``."""
END = 'end'
"""The second cut of a three-tier option that leaves nothing to the cloud."""
PRECISIONS = ('fp16', 'int8')
"""Wire precisions of a split option (fp32 would be larger than the frame at every point)."""
LEARNED = 'bottleneck'
"""The encoding of an option whose payload is a learned bottleneck's code (int8 + zstd) at its
point (``rcnn_service.bottleneck``): ``arch@imgsz:body.3:bottleneck``; two tiers only."""


@dataclass(frozen=True)
class SplitSpec:
    """One split option's name, parsed.

    Attributes:
        arch: Cloud model architecture.
        imgsz: Its input size (longest side the head resizes a frame to).
        point: The stage after which the model is cut (``transform``, ``body.<n>``, ``fpn``).
        encoding: Wire encoding, ``<precision>+<codec>`` (``int8+zstd``), of both cuts, or
            :data:`LEARNED`.
        middle_to: Three-tier: the stage after which the middle device hands over to the
            cloud, or :data:`END`; empty: two tiers (robot and cloud).
    """

    arch: str
    imgsz: int
    point: str
    encoding: str
    middle_to: str = ''

    @property
    def key(self) -> str:
        """The option's name, ``arch@imgsz:point:encoding`` (``point/middle_to`` on three)."""
        cut = f'{self.point}/{self.middle_to}' if self.middle_to else self.point
        return f'{self.arch}@{self.imgsz}:{cut}:{self.encoding}'

    @property
    def three_tier(self) -> bool:
        """Whether a middle device runs part of the model."""
        return bool(self.middle_to)

    @property
    def to_cloud(self) -> bool:
        """Whether the cloud runs part of the model (not on a three-tier option to the end)."""
        return self.middle_to != END

    @property
    def learned(self) -> bool:
        """Whether the payload is a learned bottleneck's code."""
        return self.encoding == LEARNED

    @property
    def precision(self) -> str:
        """The precision part of the encoding: ``fp16``, ``int8`` or :data:`LEARNED`."""
        return self.encoding.split('+')[0]

    @property
    def codec(self) -> str:
        """The encoding's compression (``zstd``, ``lz4`` or ``none``)."""
        return self.encoding.partition('+')[2]


def parse_spec(text: str) -> SplitSpec:
    """Parse ``arch@imgsz:point:encoding`` or ``arch@imgsz:i/j:encoding``.

    Whether ``i`` comes before ``j`` needs the model's points: :func:`check_order`.

    Raises:
        ConfigError: If the text is not of either form, or names an unknown precision or codec.
    """
    parts = text.split(':')
    model, _, size = parts[0].rpartition('@')
    precision, _, codec = parts[-1].partition('+')
    learned = parts[-1] == LEARNED
    cut = parts[1] if len(parts) == 3 else ''
    point, slash, middle_to = cut.partition('/')
    if len(parts) != 3 or not model or not size.isdigit() or int(size) <= 0 or \
            not point or point == END or (slash and not middle_to) or '/' in middle_to or \
            (learned and slash) or \
            (not learned and (precision not in PRECISIONS or codec not in COMPRESSORS)):
        raise ConfigError(f'split option {text!r}: expected arch@imgsz:point:encoding or '
                          f'arch@imgsz:i/j:encoding (j a later point or {END}) with encoding '
                          f'{"/".join(PRECISIONS)}+{"/".join(sorted(COMPRESSORS))}, or '
                          f'arch@imgsz:point:{LEARNED} (two tiers)')
    return SplitSpec(model, int(size), point, parts[2], middle_to)


def check_order(spec: SplitSpec, points: Sequence[str]) -> None:
    """Check that a three-tier option's cuts are points of its model, ``i`` before ``j``.

    Args:
        spec: The option.
        points: The model's split points in execution order.

    Raises:
        ConfigError: Naming the option, if a cut is not a point or ``j`` is not after ``i``.
    """
    order = {name: k for k, name in enumerate(points)}
    if spec.point not in order:
        raise ConfigError(f'split option {spec.key!r}: {spec.point!r} is not a split point of '
                          f'{spec.arch} ({", ".join(points)})')
    if spec.three_tier and spec.to_cloud and \
            order.get(spec.middle_to, -1) <= order[spec.point]:
        raise ConfigError(f'split option {spec.key!r}: the second cut {spec.middle_to!r} must be '
                          f'a split point after {spec.point!r} ({", ".join(points)}) or {END}')

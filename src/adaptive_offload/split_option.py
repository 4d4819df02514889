"""Names of split options: the cloud model cut after a stage, its head on the robot.

An option is named ``<arch>@<imgsz>:<point>:<encoding>``, e.g.
``fasterrcnn_mobilenet_v3_small_fpn@640:body.2:int8+zstd``. The manager estimates options by
these names (``offload_manager.split_figures``), decisions carry them (``Decision.split``), and
the bridge runs the head they name (``cloud_bridge.split_head``): one parser for all three.
"""

from __future__ import annotations

from dataclasses import dataclass

from adaptive_offload.errors import ConfigError
from adaptive_offload.tensor_compression import COMPRESSORS

SPLIT_PREFIX = 'split:'
"""A cloud report of a split request names its option as ``split:<option>`` in ``model``."""
PRECISIONS = ('fp16', 'int8')
"""Wire precisions of a split option (fp32 would be larger than the frame at every point)."""


@dataclass(frozen=True)
class SplitSpec:
    """One split option's name, parsed.

    Attributes:
        arch: Cloud model architecture.
        imgsz: Its input size (longest side the head resizes a frame to).
        point: The stage after which the model is cut (``transform``, ``body.<n>``, ``fpn``).
        encoding: Wire encoding, ``<precision>+<codec>`` (``int8+zstd``).
    """

    arch: str
    imgsz: int
    point: str
    encoding: str

    @property
    def key(self) -> str:
        """The option's name, ``arch@imgsz:point:encoding``."""
        return f'{self.arch}@{self.imgsz}:{self.point}:{self.encoding}'

    @property
    def precision(self) -> str:
        """The precision part of the encoding: ``fp16`` or ``int8``."""
        return self.encoding.split('+')[0]

    @property
    def codec(self) -> str:
        """The encoding's compression (``zstd``, ``lz4`` or ``none``)."""
        return self.encoding.partition('+')[2]


def parse_spec(text: str) -> SplitSpec:
    """Parse ``arch@imgsz:point:encoding``.

    Raises:
        ConfigError: If the text is not of that form, or names an unknown precision or codec.
    """
    parts = text.split(':')
    model, _, size = parts[0].rpartition('@')
    precision, _, codec = parts[-1].partition('+')
    if len(parts) != 3 or not model or not size.isdigit() or int(size) <= 0 or \
            not parts[1] or precision not in PRECISIONS or codec not in COMPRESSORS:
        raise ConfigError(f'split option {text!r}: expected arch@imgsz:point:encoding with '
                          f'encoding {"/".join(PRECISIONS)}+{"/".join(sorted(COMPRESSORS))}')
    return SplitSpec(model, int(size), parts[1], parts[2])

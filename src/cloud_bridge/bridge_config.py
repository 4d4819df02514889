"""Cloud bridge parameters, validated, and what they build: transports, split heads, the bridge."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import random
import socket
from typing import Any, Mapping

from adaptive_offload.errors import ConfigError
from adaptive_offload.params import ParameterSpec, resolve
from adaptive_offload.split_option import parse_spec
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.endpoints import HedgedEndpoints
from cloud_bridge.resilience import CircuitBreaker
from cloud_bridge.sampling import make_sampler
from cloud_bridge.split_head import load_detector, SplitRoute
from cloud_bridge.tail_client import V2TailTransport
from cloud_bridge.transport import InferenceTransport, make_transport
from rcnn_service.bottleneck import load_bottleneck

SAMPLING_PHASES = 1000
"""The uniform sampler of each bridge starts at a random count below this: bridges started
together (a fleet after an outage) would otherwise send their one-in-n frames in step."""

PARAMETERS = (
    ParameterSpec('url', 'grpc://127.0.0.1:8081',
                  'V2 inference server: grpc://host:port (gRPC), grpcs:// (gRPC over TLS) or '
                  'http(s)://host:port (REST); several (replicas, regions) separated by commas.'),
    ParameterSpec('model', 'rcnn', 'Model name on the server.'),
    ParameterSpec('token', '', 'Bearer token; empty sends none (see token_file).'),
    ParameterSpec('token_file', '',
                  'File whose first line is the bearer token: kept out of the parameter '
                  'server, where anyone on the ROS graph can read it; excludes token.'),
    ParameterSpec('ca_file', '',
                  'PEM CA file that verifies a grpcs:// or https:// service; empty trusts the '
                  "system's CAs."),
    ParameterSpec('image_topic', '/camera/image_raw', 'Camera topic (sensor_msgs/Image).'),
    ParameterSpec('compressed', False, 'Subscribe to <image_topic>/compressed instead.'),
    ParameterSpec('deadline_ms', 250.0, 'Deadline applied while no decision is valid.',
                  minimum=1.0, maximum=60000.0),
    ParameterSpec('max_retries', 1,
                  'Retries of a refused or dropped connection, only while the deadline allows.',
                  minimum=0, maximum=10),
    ParameterSpec('breaker_threshold', 3, 'Consecutive failures that open the circuit breaker.',
                  minimum=1, maximum=1000),
    ParameterSpec('breaker_cooldown_ms', 1000.0, 'Open time before the breaker probes again.',
                  minimum=0.0, maximum=600000.0),
    ParameterSpec('max_in_flight', 2,
                  'Requests in flight at once (their round trips overlap).', minimum=1,
                  maximum=64),
    ParameterSpec('max_pending', 1,
                  'Frames waiting for a free request; when full the oldest is dropped.',
                  minimum=1, maximum=64),
    ParameterSpec('sampling', 'uniform',
                  'Which of one-in-n frames go to the cloud: uniform (every n-th) or content '
                  "(where the edge's newest result is unsure or changing; same rate)."),
    ParameterSpec('edge_sources', ['edge'],
                  'source_name of the edge targets whose results content sampling reads.'),
    ParameterSpec('hedge_share', 0.1,
                  'With several urls: most requests sent again to a second endpoint when the '
                  'first is slow, as a share of all requests (0: never).',
                  minimum=0.0, maximum=1.0),
    ParameterSpec('robot_id', '',
                  "This robot's id on a shared service (its fair turn, its metrics); empty: "
                  "the host's name."),
    ParameterSpec('split_options', [''],
                  'Split options (arch@imgsz:point:encoding, or arch@imgsz:i/j:encoding through '
                  'the middle device: split_middle_url) whose head this robot runs, loaded at '
                  "start: list the manager's split_options; [\"\"]: none."),
    ParameterSpec('split_checkpoint', '',
                  "The service model's weights (the file the service loads), for the heads "
                  'of split_options.'),
    ParameterSpec('split_url', '',
                  "The service's V2 REST URL for split requests (its tail model speaks REST "
                  'only); empty: the first http(s) endpoint of url.'),
    ParameterSpec('split_bottleneck', '',
                  'The learned bottleneck file (the one the service loads with --bottleneck) '
                  'whose encoder split options of encoding bottleneck run after the head; '
                  'empty: none.'),
    ParameterSpec('split_middle_url', '',
                  "The middle device's service base URL (http(s)://host:port) for three-tier "
                  "split options: its tail runs i to j and forwards the rest to the cloud's "
                  'tail, or runs the whole rest (j end); same token, ca_file and robot_id as '
                  'the cloud; empty: none.'),
)


@dataclass(frozen=True)
class CloudConfig:
    """Validated cloud bridge parameters (see :data:`PARAMETERS`)."""

    url: str
    model: str
    token: str
    token_file: str
    ca_file: str
    image_topic: str
    compressed: bool
    deadline_ms: float
    max_retries: int
    breaker_threshold: int
    breaker_cooldown_ms: float
    max_in_flight: int
    max_pending: int
    sampling: str
    edge_sources: list
    hedge_share: float
    robot_id: str
    split_options: list
    split_checkpoint: str
    split_url: str
    split_bottleneck: str
    split_middle_url: str

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None = None) -> CloudConfig:
        """Build from parameter values over the defaults.

        Raises:
            ConfigError: For unknown names, wrong types or a URL no transport speaks.
        """
        config = cls(**resolve(PARAMETERS, values))
        if config.token and config.token_file:
            raise ConfigError('give token or token_file, not both')
        make_sampler(config.sampling)  # a name it does not know fails here
        if config.max_in_flight < 1 or config.max_pending < 1:
            raise ConfigError('max_in_flight and max_pending must be >= 1')
        config.make_transport().close()  # validates the URL; connections open lazily
        if config.splits():
            for option in config.splits():
                if parse_spec(option).three_tier and not config.split_middle_url:
                    raise ConfigError(f'split option {option!r} has three tiers: set '
                                      "split_middle_url, the middle device's service")
            if not config.split_checkpoint:
                raise ConfigError('split_options need split_checkpoint: the weights the '
                                  'service loads, from which the heads are built')
            learned = [o for o in config.splits() if parse_spec(o).learned]
            if learned and not config.split_bottleneck:
                raise ConfigError(f'split options {learned} need split_bottleneck: the '
                                  'learned bottleneck file the service loads (--bottleneck)')
        if config.splits() or config.split_url:
            config.make_tail().close()  # validates split_url, or finds a REST endpoint
        if config.split_middle_url:
            config._middle_tail().close()  # validates it; connections open lazily
        return config

    def splits(self) -> tuple[str, ...]:
        """Split options whose heads this bridge runs; empty: none."""
        return tuple(o for o in self.split_options if o)

    def make_tail(self, encoding: str = 'fp16', compression: str = 'zstd') -> V2TailTransport:
        """Build the client of the service's tail model (``split_url`` or the first REST URL).

        Args:
            encoding: How payloads given as tensors are encoded (see V2TailTransport).
            compression: How they are compressed.

        Raises:
            ConfigError: If no URL speaks REST, or the token file cannot be read.
        """
        rest = [u for u in self.urls() if u.startswith(('http://', 'https://'))]
        url = self.split_url or (rest[0] if rest else '')
        if not url:
            raise ConfigError(f'split_options need a REST endpoint: url {self.url!r} has none, '
                              'set split_url')
        return V2TailTransport(url, self.model, self.bearer_token(), self.ca_file,
                               self.robot_id or socket.gethostname(), encoding, compression)

    def make_middle(self) -> V2TailTransport | None:
        """Build the client of the middle device's tail model (None without three-tier options).

        Raises:
            ConfigError: If ``split_middle_url`` is empty or not http(s), or the token file
                cannot be read.
        """
        if not any(parse_spec(o).three_tier for o in self.splits()):
            return None
        if not self.split_middle_url:
            raise ConfigError('three-tier split options need split_middle_url, the middle '
                              "device's service")
        return self._middle_tail()

    def _middle_tail(self) -> V2TailTransport:
        return V2TailTransport(self.split_middle_url, self.model, self.bearer_token(),
                               self.ca_file, self.robot_id or socket.gethostname())

    def make_split(self) -> SplitRoute | None:
        """Load the heads of ``split_options`` (None without any).

        Raises:
            ConfigError: For an option whose point the model lacks, three-tier cuts out of
                order, no REST endpoint, a bad ``split_middle_url``, or a ``split_bottleneck``
                that is unreadable or not trained for the model and the option's point.
            BackendError: If the model does not load.
        """
        if not self.splits():
            return None
        bottleneck = load_bottleneck(self.split_bottleneck) if any(
            parse_spec(o).learned for o in self.splits()) else None
        return SplitRoute(self.splits(), self.make_tail(), load_detector(self.split_checkpoint),
                          self.make_middle(), bottleneck)

    def make_transport(self) -> InferenceTransport:
        """Build the transport for the URL's scheme; several URLs: one that hedges over them.

        Raises:
            ConfigError: For a URL no transport speaks.
        """
        token, robot = self.bearer_token(), self.robot_id or socket.gethostname()
        transports = [(url, make_transport(url, self.model, token, self.ca_file, robot))
                      for url in self.urls()]
        if len(transports) == 1:
            return transports[0][1]
        return HedgedEndpoints(transports, self.hedge_share)

    def urls(self) -> list[str]:
        """Return the endpoint URLs of ``url`` (comma-separated).

        Raises:
            ConfigError: If it names none, or one twice.
        """
        urls = [u.strip() for u in self.url.split(',') if u.strip()]
        if not urls:
            raise ConfigError('url names no endpoint')
        if len(set(urls)) != len(urls):
            raise ConfigError(f'url names an endpoint twice: {self.url!r}')
        return urls

    def bearer_token(self) -> str:
        """Return the token, read from ``token_file`` when that is set.

        Raises:
            ConfigError: If the file cannot be read or its first line is empty.
        """
        if not self.token_file:
            return self.token
        try:
            lines = Path(self.token_file).read_text(encoding='utf-8').splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f'token_file {self.token_file!r}: {err}') from err
        token = lines[0].strip() if lines else ''
        if not token:
            raise ConfigError(f'token_file {self.token_file!r} has no token on its first line')
        return token

    def make_bridge(self, transport: InferenceTransport | None = None,
                    split: SplitRoute | None = None) -> CloudBridge:
        """Build the bridge core with this configuration's breaker and retries.

        Args:
            transport: The image requests' transport; by default :meth:`make_transport`'s.
            split: The split route; None runs none (:meth:`make_split` loads one).
        """
        return CloudBridge(transport or self.make_transport(), max_retries=self.max_retries,
                           breaker=CircuitBreaker(self.breaker_threshold,
                                                  self.breaker_cooldown_ms), model=self.model,
                           sampler=make_sampler(self.sampling,
                                                random.randrange(SAMPLING_PHASES)),
                           split=split)

    def sampled_sources(self) -> tuple[str, ...]:
        """Return the edge sources whose results the sampler reads (none for uniform)."""
        return tuple(self.edge_sources) if self.sampling == 'content' else ()

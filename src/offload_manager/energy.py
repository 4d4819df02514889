"""Robot energy per frame: a model from device profiles, and readers that measure it.

The model (:class:`EnergyModel`) charges a frame what an energy reader on the robot would
measure for it: the idle power over the frame's camera period (drawn whatever the route), the
power computing draws beyond idle over the robot's own inference time (the edge model, or a
split's head), and radio energy per bit sent and received (beyond idle). Waiting for the
cloud costs nothing beyond idle: the robot idles the same while an edge frame's period runs
out. Per-frame totals are therefore comparable with measured ones (RAPL, battery), and the
options' differences are the work each adds.

Readers replace the model with measurements where the hardware allows (one protocol, a
registry): Intel RAPL energy counters (powercap sysfs, wrap-around handled), NVIDIA NVML's
total energy, and ``sensor_msgs/BatteryState`` (voltage x current, integrated).
:class:`MeasuredEnergy` shares measured energy among the frames that ended in each interval.
Every :class:`EnergyEstimate` says whether it was measured or modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from adaptive_offload.errors import ConfigError
from adaptive_offload.yaml_files import read_yaml


@dataclass(frozen=True)
class DeviceProfile:
    """Power and speed figures of one device (see ``config/devices.yaml`` for sources).

    Attributes:
        name: Profile name.
        idle_w: Power while idle (waiting), W.
        compute_w: Power while running inference, W.
        tx_nj_per_bit: Radio energy per bit sent, nJ.
        rx_nj_per_bit: Radio energy per bit received, nJ.
        inference_ms: Inference time by ``model@imgsz``, ms.
        price_per_gpu_hour: Price of the device's time (cloud), USD per hour.
        split_ms: Split execution times by ``model@imgsz``, then by split point (the stage
            after which the model is cut): ``(head_ms, tail_ms)``, the time of the layers
            up to the point and of those after it, on this device.
    """

    name: str
    idle_w: float
    compute_w: float
    tx_nj_per_bit: float = 0.0
    rx_nj_per_bit: float = 0.0
    inference_ms: Mapping[str, float] = field(default_factory=dict)
    price_per_gpu_hour: float = 0.0
    split_ms: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)

    def split_time_ms(self, model: str, imgsz: int, point: str) -> tuple[float, float] | None:
        """Return ``(head_ms, tail_ms)`` of ``model`` at ``imgsz`` cut after ``point``, if any.

        As :meth:`inference_time_ms`, ``<arch>-<variant>`` takes its architecture's times.
        """
        found = self.split_ms.get(f'{model}@{imgsz}')
        if found is None and '-' in model:
            found = self.split_ms.get(f'{model.split("-", 1)[0]}@{imgsz}')
        return None if found is None else found.get(point)

    def inference_time_ms(self, model: str, imgsz: int) -> float | None:
        """Return the profile's inference time of ``model`` at ``imgsz``, if it has one.

        A model named ``<arch>-<variant>`` (``yolov8n-shapes``: yolov8n trained on other data)
        runs as fast as its architecture.
        """
        found = self.inference_ms.get(f'{model}@{imgsz}')
        if found is None and '-' in model:
            found = self.inference_ms.get(f'{model.split("-", 1)[0]}@{imgsz}')
        return found


def load_devices(path: str | Path) -> dict[str, DeviceProfile]:
    """Read and validate device profiles.

    Raises:
        ConfigError: Naming the file, device and field at fault.
    """
    data = read_yaml(path, 'device profiles')
    if not isinstance(data, dict) or not isinstance(data.get('devices'), dict):
        raise ConfigError(f'{path}: expected a mapping "devices" of profiles')
    names = {f.name for f in fields(DeviceProfile)} - {'name'}
    required = {'idle_w', 'compute_w'}
    devices = {}
    for name, entry in data['devices'].items():
        where = f'{path}: device {name}'
        if not isinstance(entry, dict):
            raise ConfigError(f'{where}: expected a mapping')
        unknown, missing = set(entry) - names, required - set(entry)
        if unknown or missing:
            raise ConfigError(f'{where}: unknown fields {sorted(unknown)}, missing '
                              f'{sorted(missing)}')
        values: dict[str, Any] = {}
        for key, value in entry.items():
            if key == 'inference_ms':
                if not isinstance(value, dict):
                    raise ConfigError(f'{where}: inference_ms must map model@imgsz to ms')
                values[key] = {str(k): _positive(v, f'{where}: inference_ms {k}')
                               for k, v in value.items()}
            elif key == 'split_ms':
                values[key] = _split_ms(value, f'{where}: split_ms')
            else:
                values[key] = _positive(value, f'{where}: {key}', allow_zero=True)
        devices[str(name)] = DeviceProfile(name=str(name), **values)
    return devices


def _split_ms(value: Any, where: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Validate ``split_ms``: model@imgsz -> point -> [head_ms, tail_ms]."""
    if not isinstance(value, dict):
        raise ConfigError(f'{where} must map model@imgsz to split points')
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for model, points in value.items():
        arch, _, size = str(model).rpartition('@')
        if not arch or not size.isdigit():
            raise ConfigError(f'{where}: key {model!r} is not model@imgsz')
        if not isinstance(points, dict) or not points:
            raise ConfigError(f'{where} {model}: expected a mapping of split points')
        out[str(model)] = {}
        for point, times in points.items():
            if not isinstance(times, list) or len(times) != 2:
                raise ConfigError(f'{where} {model} {point}: expected [head_ms, tail_ms], '
                                  f'got {times!r}')
            head = _positive(times[0], f'{where} {model} {point}: head_ms', allow_zero=True)
            tail = _positive(times[1], f'{where} {model} {point}: tail_ms', allow_zero=True)
            out[str(model)][str(point)] = (head, tail)
    return out


def _positive(value: Any, where: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f'{where} must be a {"non-negative" if allow_zero else "positive"} '
                          f'number, got {value!r}')
    return float(value)


@dataclass(frozen=True)
class EnergyEstimate:
    """Energy of one frame on the robot, J, and whether it was measured."""

    joules: float
    measured: bool = False
    compute_j: float = 0.0
    radio_j: float = 0.0
    idle_j: float = 0.0


class EnergyModel:
    """Modelled energy per frame from a device profile (see the module)."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        # What computing draws beyond idle: the idle part is in every frame's period.
        self._extra_w = max(0.0, profile.compute_w - profile.idle_w)

    def frame(self, compute_ms: float, bytes_sent: int, bytes_received: int,
              period_ms: float) -> EnergyEstimate:
        """Energy of a frame that computed ``compute_ms``, sent and received bytes.

        Args:
            compute_ms: The robot's inference time for the frame (edge model, split head).
            bytes_sent: Request bytes to the cloud.
            bytes_received: Reply bytes.
            period_ms: The frame's share of the robot's time (its camera period), charged at
                idle power; 0 charges only the work the frame added.

        Returns:
            The estimate, with its parts (``compute_j`` is beyond idle).
        """
        p = self.profile
        compute = self._extra_w * max(0.0, compute_ms) / 1e3
        radio = (p.tx_nj_per_bit * bytes_sent + p.rx_nj_per_bit * bytes_received) * 8e-9
        idle = p.idle_w * max(0.0, period_ms) / 1e3
        return EnergyEstimate(compute + radio + idle, False, compute, radio, idle)

    def joules(self, compute_ms: float, bytes_sent: int, bytes_received: int,
               period_ms: float) -> float:
        """:meth:`frame`'s total alone (the policies score many options per decision)."""
        p = self.profile
        return (self._extra_w * max(0.0, compute_ms) + p.idle_w * max(0.0, period_ms)) / 1e3 + \
            (p.tx_nj_per_bit * bytes_sent + p.rx_nj_per_bit * bytes_received) * 8e-9


class EnergyReader(Protocol):
    """A cumulative energy counter of the robot (or of the part of it that computes).

    Both methods take the caller's clock (``now_ns``): a counter read from the hardware
    ignores it; one fed by messages (:class:`BatteryReader`) uses it to hold the power between
    samples and to go stale when they stop.
    """

    def available(self, now_ns: int) -> str | None:
        """None when usable, else why not (for the log)."""

    def joules(self, now_ns: int) -> float:
        """Energy consumed since the reader started, J."""


class RaplReader:
    """Intel RAPL package energy from powercap sysfs, summed over packages.

    Counters wrap at ``max_energy_range_uj``; a decrease adds one range.

    Args:
        root: The powercap directory.
    """

    def __init__(self, root: Path = Path('/sys/class/powercap')) -> None:
        self._domains = sorted(p for p in root.glob('intel-rapl:*') if p.name.count(':') == 1)
        self._last: dict[Path, int] = {}
        self._total_uj = 0

    def available(self, now_ns: int) -> str | None:
        """See :class:`EnergyReader`."""
        if not self._domains:
            return 'no intel-rapl package domains under powercap'
        try:
            for domain in self._domains:
                int((domain / 'energy_uj').read_text())
        except (OSError, ValueError) as err:
            return f'cannot read RAPL counters: {err}'
        return None

    def joules(self, now_ns: int) -> float:
        """See :class:`EnergyReader`."""
        for domain in self._domains:
            raw = int((domain / 'energy_uj').read_text())
            last = self._last.get(domain)
            if last is not None:
                delta = raw - last
                if delta < 0:
                    delta += int((domain / 'max_energy_range_uj').read_text())
                self._total_uj += delta
            self._last[domain] = raw
        return self._total_uj / 1e6


class NvmlReader:
    """NVIDIA GPU energy (``nvmlDeviceGetTotalEnergyConsumption``, mJ), e.g. on a Jetson dGPU.

    Args:
        nvml: The ``pynvml`` module (tests inject a fake); imported when None.
        index: GPU index.
    """

    def __init__(self, nvml: Any = None, index: int = 0) -> None:
        self._reason: str | None = None
        self._start_mj = 0.0
        try:
            if nvml is None:
                import pynvml

                nvml = pynvml
            nvml.nvmlInit()
            self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = nvml
            self._start_mj = float(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception as err:  # ImportError, NVMLError_*: all mean "not here"
            self._reason = f'NVML unavailable: {err}'

    def available(self, now_ns: int) -> str | None:
        """See :class:`EnergyReader`."""
        return self._reason

    def joules(self, now_ns: int) -> float:
        """See :class:`EnergyReader`."""
        now = float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        return (now - self._start_mj) / 1e3


class BatteryReader:
    """Energy drawn from the battery, integrated from ``sensor_msgs/BatteryState``.

    ROS reports discharge as negative current; the magnitude of discharge is integrated
    (trapezoids), charging counts as zero, and NaN (unknown) samples are skipped. A battery
    reports at 1-10 Hz, slower than frames end, so between samples the last power is held:
    otherwise most frames would read 0 J and one the whole interval. The battery feeds the
    whole robot (motors too), so this measures perception's energy only where it dominates.

    Args:
        stale_after_s: Without a sample for this long the reader is unavailable (the records
            fall back to the model) and the held power stops counting.
    """

    def __init__(self, stale_after_s: float = 5.0) -> None:
        self._stale_ns = int(stale_after_s * 1e9)
        self._last: tuple[int, float] | None = None
        self._total = 0.0

    def update(self, voltage_v: float, current_a: float, stamp_ns: int) -> None:
        """Add one BatteryState sample, ``stamp_ns`` on the clock the readings are taken on."""
        if not (math.isfinite(voltage_v) and math.isfinite(current_a)):
            return
        power = voltage_v * max(0.0, -current_a)
        if self._last is not None and stamp_ns > self._last[0]:
            gap = min(stamp_ns - self._last[0], self._stale_ns)  # a silence is not a discharge
            self._total += (power + self._last[1]) / 2 * gap / 1e9
        if self._last is None or stamp_ns > self._last[0]:
            self._last = (stamp_ns, power)

    def available(self, now_ns: int) -> str | None:
        """See :class:`EnergyReader`."""
        if self._last is None:
            return 'no BatteryState received yet'
        if now_ns - self._last[0] > self._stale_ns:
            return f'no BatteryState for {(now_ns - self._last[0]) / 1e9:.1f} s'
        return None

    def joules(self, now_ns: int) -> float:
        """See :class:`EnergyReader`."""
        if self._last is None:
            return 0.0
        held = min(max(0, now_ns - self._last[0]), self._stale_ns)
        return self._total + self._last[1] * held / 1e9


READERS: dict[str, Callable[..., EnergyReader]] = {
    'rapl': RaplReader,
    'nvml': NvmlReader,
    'battery': BatteryReader,
}


class MeasuredEnergy:
    """Shares measured energy among the frames that ended since the last reading.

    Frames overlap (edge and cloud at once), so energy cannot be cut per frame; each call of
    :meth:`frames_ended` reads the counter once and splits the energy since the previous call
    evenly among the frames that ended in between. While the reader is unavailable (not yet
    fed, or stale) it answers None and the frames are modelled; measuring restarts from the
    first reading after that.

    Args:
        reader: The counter.
    """

    def __init__(self, reader: EnergyReader) -> None:
        self._reader = reader
        self._last: float | None = None

    def frames_ended(self, count: int, now_ns: int) -> EnergyEstimate | None:
        """Energy per frame of ``count`` frames that ended since the last call, at ``now_ns``."""
        if count <= 0:
            return None
        if self._reader.available(now_ns) is not None:
            self._last = None
            return None
        now = self._reader.joules(now_ns)
        if self._last is None:  # no interval measured yet
            self._last = now
            return None
        # A held power that overshot is paid back before anything more counts.
        spent, self._last = max(0.0, now - self._last), max(self._last, now)
        return EnergyEstimate(spent / count, measured=True)

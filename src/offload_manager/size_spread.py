"""JPEGs of another size now and then, so that the uplink fit can tell base from rate.

The manager's uplink estimate (``adaptive_offload.uplink``) fits a request's non-server time
as ``base + bytes / rate``. JPEGs at one quality are all about one size, and any base fits one
size with some rate: bytes over the whole non-server time then read a 50 Mbit/s link with a
30 ms round trip as about 3.4 Mbit/s, and every larger payload (a higher quality, a split
option) looks far slower than it is. On the edge route sizes never differ: only probes go out,
all at the smallest quality.

So while the estimator lacks sizes that differ (:attr:`UplinkEstimator.needs_spread`: fewer
than ``SPREAD_WANTED`` = 6 of its fit window's 60 requests on the rarer side of a 1.5 times
size gap), once :data:`SPREAD_EVERY` - 1 requests at the plan's quality have ended since the
last at another, the plan sends its JPEGs at the configured quality farthest in size from its
own (q95 for q50 and q75, 2.9 and 1.95 times the bytes; q50 for q95), if the cloud answers at
that quality are expected in time (P(late) <= epsilon): a late one would count as a failure.

What it costs (about 6 of every 60 requests once the gap is filled; more for a while after
a change point, which empties the estimator's window), measured in the simulator (10 fps, Pi 5,
the split evaluation's frame: q50 13.7 kB, q95 39 kB):

- Edge route: probes alone, one in :data:`SPREAD_EVERY` at most: with ``probe_every`` 10,
  6 probes a minute at q95 instead of q50, 26 kB more each: about 150 kB a minute (380 kB
  for the simulator's default 34 kB q50 frame), a few mJ of radio. A confirm or learning
  burst (every frame a probe) is left at q50.
- Cloud and hedged routes: every frame goes out at one quality, as uninformative to the fit.
  A plan at the other quality holds for one plan period (2 to 3 frames at 0.25 s), so 10 to
  13 % of the requests go at q95: 1.5 MB a minute more at q50 (+19 %), 1 to 2 mJ a frame of
  radio on the Pi (0.5 %). Those frames are answered like any other, at a better quality; they
  take longer to send (40 ms more at 5 Mbit/s, within the deadline by the check above), so
  the route's P95 latency grows there (77 to 112 ms at 5 Mbit/s). Worth it: without them a
  cloud route keeps reading a 50 Mbit/s link as 3.4 Mbit/s, and any payload larger than the
  plan's JPEG (a higher quality, a split option) is estimated 15 times too slow to send.
- Split route: left alone. Its payloads are not JPEGs, and are 5 times a q50 JPEG or more:
  with the JPEGs sent before, they spread the window themselves.

Requests at the spread size measure the link only: they stay out of the cloud latency series
and its trend (``Observations``), and a change point is judged among requests of one size
(``adaptive_offload.uplink``), so a q95 JPEG is not taken for a slower cloud or a faster link.
"""

from __future__ import annotations

from dataclasses import replace
import math

from adaptive_offload.datatypes import Route
from adaptive_offload.uplink import SIZE_SPAN
from offload_manager.jpeg_sizes import jpeg_factor
from offload_manager.observations import Observations
from offload_manager.policy import Plan, PolicySettings

SPREAD_EVERY = 4
"""While the fit lacks spread, at most one request in this many goes at another size."""


def spread_quality(quality: int, qualities: tuple[int, ...]) -> int | None:
    """Return the configured quality farthest in size from ``quality``; None if none is far.

    Args:
        quality: The plan's JPEG quality.
        qualities: The qualities the manager may choose.

    Returns:
        The quality whose JPEG size differs most from ``quality``'s, if by at least the
        estimator's size span (1.5 times); else None.
    """
    if not qualities:
        return None
    size = jpeg_factor(quality)
    other = max(qualities, key=lambda q: abs(math.log(jpeg_factor(q) / size)))
    ratio = jpeg_factor(other) / size
    return other if max(ratio, 1 / ratio) >= SIZE_SPAN else None


def spread_sizes(plan: Plan, obs: Observations, settings: PolicySettings) -> Plan:
    """Return ``plan`` with its JPEGs at another size where the uplink fit needs one.

    Args:
        plan: The plan chosen; its route and quality are what the frames would carry.
        obs: The observations (their uplink estimator, cloud latencies and request count).
        settings: The policy settings (qualities, deadline, epsilon, probe period).

    Returns:
        ``plan`` at the spread quality (see the module), or ``plan`` itself.
    """
    if plan.route is Route.SPLIT or (plan.route is Route.EDGE and (
            not plan.probe_every or plan.probe_every != settings.probe_every)):
        return plan
    if not obs.bandwidth.needs_spread or obs.since_spread < SPREAD_EVERY - 1:
        return plan
    other = spread_quality(plan.jpeg_quality, settings.qualities)
    if other is None:
        return plan
    late = obs.cloud_late(other, settings.deadline_ms)
    if late is None or late > settings.epsilon:
        return plan
    obs.spread_quality = other
    return replace(plan, jpeg_quality=other,
                   reason=f'{plan.reason}; q{other} for the uplink fit')

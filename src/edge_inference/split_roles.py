"""The split roles of edge_inference: the detector's head on the robot, its tail on a Pi.

A ``head`` takes camera frames under the decision as the whole detector would (the edge route,
or a probe), letterboxes each, runs layers ``[0, k)`` and publishes the crossing tensors as one
:class:`adaptive_offload.split_frame.SplitFrame` (a CompressedImage). A decision whose
``split`` names a split option of its own model to the end (``model@imgsz:k/end:encoding``)
sets k, the wire encoding and the input size of the frame; otherwise its parameters do
(``split_point``, ``split_encoding``, the decision's size), with a note in the report when the
decision asked for something else (:mod:`edge_inference.split_choice`). The model is prepared
at each k as frames need it. Its report is ``forwarded`` (the tail answers the frame): the
option run as ``split``, the head's time, the encode time, the bytes sent, no detections. A
head at ``split_point`` 0 runs the whole detector on a frame whose decision names no split of
it (the manager chose the robot's own model) and answers it itself, as an unsplit
edge_inference would; every ``probe_every``-th such frame also goes on as a probe of the
decision's ``split_probe``, so that the manager keeps measuring the split it left. Every report
of a head or a tail says its ``split_role``. A
``tail`` runs whatever arrives: it reads the message within bounds, refuses one from other
weights or another split point (at ``split_point`` 0 it runs any point the head chose), runs
layers ``[k, end)``, NMS and the box scaling, and publishes the detections and its ``ok``
report, with the message's option as ``split``, under its own ``source_name``: to the manager
it is one more edge source. A bad or refused message, or a k the model does not have, gives a
``failed`` report that says why, never an exception.
The message and its parameters: :mod:`edge_inference.split_message`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import time
from typing import Any, Callable, Mapping

from adaptive_offload.admission import EveryNth
from adaptive_offload.conversions import image_to_frame, stamp_to_ns
from adaptive_offload.datatypes import (Decision, Detection, DetectionSet, Frame,
                                        InferenceReport)
from adaptive_offload.errors import BackendError, ConfigError, ConversionError
from adaptive_offload.split_frame import read_split_frame, SplitFrame
from adaptive_offload.split_request import SplitRequest
from edge_inference.detector import BackendOptions, class_indices
from edge_inference.inference import build_edge, EdgeConfig, EdgeCore, reconfigured
from edge_inference.split_choice import choose, HeadChoice, MAX_QUOTED, probe_choice
from edge_inference.split_message import (bad_request, crossing_tensors, DECISION_SEQ,
                                          head_message, IMGSZ, int_param, MAX_INPUT_SIDE,
                                          MAX_SPLIT_NAME, read_letterbox, SPLIT, text_param,
                                          WEIGHTS)
from edge_inference.split_model import Letterbox, SplitModel

Send = Callable[[SplitFrame], None]


def build_core(config: EdgeConfig, send: Send,
               listening: Callable[[], bool] | None = None) -> EdgeCore:
    """Make the edge core of ``config``'s role: whole detector, head or tail, model warmed up.

    Args:
        config: Parameters.
        send: Publishes a head's split frames (unused by the other roles).
        listening: Whether a tail takes what ``send`` publishes now (a head's; None: always).

    Raises:
        ConfigError: For a split point the model does not have, or a bad class filter.
        BackendError: If the model cannot be loaded.
    """
    if not config.split_role:
        return build_edge(config)
    # A tail that follows the head (k = 0) is prepared at each point as messages name it.
    model = SplitModel.load(BackendOptions(config.model, config.device,
                                           config.ultralytics_config_dir), config.split_point or 1)
    model.warm_up(config.imgsz)
    if config.split_role == 'head':
        return SplitHead(config, model, send, listening=listening)
    return SplitTail(config, model)


NO_TAIL = 'no tail subscribes to the split topic'
"""Why a head answered a split frame itself, or sent no probe."""


def _always() -> bool:
    return True


class _SplitRole:
    """What head and tail share: config, live parameters, class names, drop reports."""

    def __init__(self, config: EdgeConfig, model: SplitModel,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.config = config
        self.model = model
        self._clock = clock
        self._classes = class_indices(model.names, config.classes)

    def reconfigure(self, values: Mapping[str, Any]) -> EdgeConfig:
        """Apply parameters set at runtime (see :func:`edge_inference.inference.reconfigured`).

        Raises:
            ConfigError: For a parameter that is not live or a wrong value; nothing changes.
        """
        self.config = reconfigured(self.config, values)
        return self.config

    def class_names(self) -> dict[int, str]:
        """Class names of the model."""
        return dict(self.model.names)

    def drop(self, stamp_ns: int, frame_id: str, reason: str,
             decision: Decision) -> InferenceReport:
        """Report a frame that was not processed (see :class:`FrameProcessor`)."""
        return InferenceReport(stamp_ns=stamp_ns, frame_id=frame_id,
                               source=self.config.source_name, status='dropped', reason=reason,
                               model=self.config.model_name, decision_seq=decision.seq,
                               split_role=self.config.split_role)

    def _report(self, msg: Any, decision_seq: int) -> InferenceReport:
        return InferenceReport(stamp_ns=stamp_to_ns(msg.header.stamp),
                               frame_id=str(msg.header.frame_id),
                               source=self.config.source_name, model=self.config.model_name,
                               decision_seq=decision_seq, split_role=self.config.split_role)

    def _detect(self, model: SplitModel, raw: Any, box: Letterbox) -> tuple[Detection, ...]:
        """NMS and boxes of the network's raw output, under the live thresholds."""
        config = self.config
        return model.detections(raw, box, config.conf, config.iou, self._classes,
                                config.max_det)

    def _answer(self, report: InferenceReport, dets: tuple[Detection, ...], start: int,
                run_start: int) -> tuple[DetectionSet, InferenceReport]:
        """Return a frame's detections and ``ok`` report, timed from ``run_start`` (model)."""
        end = self._clock()
        result = DetectionSet(stamp_ns=report.stamp_ns, frame_id=report.frame_id,
                              source=self.config.source_name, detections=dets,
                              model=self.config.model_name)
        return result, replace(report, detections=len(dets),
                               inference_ms=(end - run_start) / 1e6, total_ms=(end - start) / 1e6)

    def _failed(self, report: InferenceReport, err: Exception, start: int) -> InferenceReport:
        """Return ``report`` failed by ``err``: a bad input says why, a model error is named so."""
        reason = str(err) if isinstance(err, ConversionError) else f'inference_error: {err}'
        return replace(report, status='failed', reason=reason, total_ms=self._ms_since(start))

    def _ms_since(self, start: int) -> float:
        return (self._clock() - start) / 1e6


class SplitHead(_SplitRole):
    """Runs layers ``[0, k)`` on camera frames and sends what crosses.

    k, the wire encoding and the input size are the decision's split option's when it names
    one of this model, else the parameters' (:func:`edge_inference.split_choice.choose`). At
    ``split_point`` 0 a frame whose decision names no split runs whole here; every
    ``probe_every``-th of them is also sent on the decision's ``split_probe``, if it names a
    split of this model: the head runs to its k, sends what crosses, and finishes the frame
    from there (the same boxes, bit for bit, at the same input size).

    While no tail takes what it sends (not started yet, stopped, deactivated), a frame the
    decision splits is answered here whole instead, its report naming the split as
    ``split_unsent``, and no probe is sent: sent, they would be lost.

    Args:
        config: Parameters (``split_point`` and ``split_encoding`` when no decision sets them).
        model: The detector, prepared at the split point.
        send: Publishes each frame's :class:`SplitFrame`.
        clock: Monotonic nanosecond clock for timings.
        listening: Whether a tail takes what ``send`` publishes now (on ROS: the split
            topic has a subscription); None: always.
    """

    def __init__(self, config: EdgeConfig, model: SplitModel, send: Send,
                 clock: Callable[[], int] = time.perf_counter_ns,
                 listening: Callable[[], bool] | None = None) -> None:
        super().__init__(config, model, clock)
        self._send = send
        self._listening = listening or _always
        self._probes = EveryNth()
        self._split_probes = EveryNth()
        self._at: dict[int, SplitModel] = {model.point.index: model}

    def process(self, msg: Any, decision: Decision,
                waited_ns: int = 0) -> tuple[DetectionSet | None, InferenceReport]:
        """Run the head on one image message and send its tensors (see :class:`FrameProcessor`).

        Returns:
            No detections (the tail makes them) and the report: ``forwarded`` with the option
            run as ``split``, the head's time as ``inference_ms``, the tensors' encoding and
            the message's making as ``encode_ms``, the message's bytes as ``bytes_sent``;
            ``failed`` (a k the model does not have names the valid ones) or ``skipped``. A
            frame run whole (at ``split_point`` 0, or with no tail listening): its detections
            and ``ok`` report, a probe's option as ``split_probe`` with its encode time and
            bytes, a split it could not send as ``split_unsent``.
        """
        start = self._clock()
        report = self._report(msg, decision.seq)
        if not decision.route.uses_edge and not self._probes.pick(decision.probe_every):
            return None, replace(report, status='skipped', reason=f'route={decision.route.value}')
        config = self.config
        choice = choose(decision, config)
        option = choice.option(config.model_name)
        report = replace(report, imgsz=choice.imgsz, reason=choice.note)
        try:
            frame = image_to_frame(msg)
            if choice.whole:
                return self._whole(frame, report, decision, choice, start)
            if not self._listening():
                note = '; '.join(r for r in (report.reason, f'{NO_TAIL}: answered here') if r)
                return self._answer_whole(frame, replace(report, split_unsent=option, reason=note),
                                          choice.imgsz, start)
            model = self._model_at(choice.point, option)
            x, box = model.letterbox(frame.image, choice.imgsz)
            head_start = self._clock()
            crossing = model.head(x)
            encode_start = self._clock()
            out = head_message(frame, model, box, crossing, choice, config.model_name,
                               decision.seq, option)
            encode_end = self._clock()
        except (ConversionError, BackendError) as err:
            return None, self._failed(report, err, start)
        self._send(out)
        return None, replace(report, status='forwarded', split=option,
                             inference_ms=(encode_start - head_start) / 1e6,
                             encode_ms=(encode_end - encode_start) / 1e6,
                             total_ms=self._ms_since(start), bytes_sent=len(out.data))

    def _whole(self, frame: Frame, report: InferenceReport, decision: Decision,
               choice: HeadChoice, start: int) -> tuple[DetectionSet, InferenceReport]:
        """Answer a frame with the whole detector, sending it on as a split probe if due.

        A probe that cannot be sent (a k the model lacks, a tensor that does not encode)
        leaves the frame answered all the same, with a note saying why.

        Raises:
            ConversionError: For an image that does not fit the model.
            BackendError: If the model fails.
        """
        probe, note = probe_choice(decision, self.config)
        if probe is not None and self._split_probes.pick(decision.probe_every):
            option = probe.option(self.config.model_name)
            if not self._listening():
                note = f'probe {option[:MAX_QUOTED]!r} not sent: {NO_TAIL}'
            else:
                answered, report, note = self._send_probe(frame, report, decision, choice,
                                                          probe, option, start)
                if answered is not None:
                    return answered
        if note:
            report = replace(report, reason='; '.join(r for r in (report.reason, note) if r))
        return self._answer_whole(frame, report, choice.imgsz, start)

    def _send_probe(self, frame: Frame, report: InferenceReport, decision: Decision,
                    choice: HeadChoice, probe: HeadChoice, option: str, start: int
                    ) -> tuple[tuple[DetectionSet, InferenceReport] | None, InferenceReport, str]:
        """Send ``frame`` on as a probe: the answer if the run finished it, the report, a note.

        At the frame's own input size the probe's head is the first part of the frame's run,
        finished here from the crossing; at another size the frame is left to run whole.
        """
        try:
            model = self._model_at(probe.point, option)
            x, box = model.letterbox(frame.image, probe.imgsz)
            run_start = self._clock()
            crossing = model.head(x)
            encode_start = self._clock()
            out = head_message(frame, model, box, crossing, probe, self.config.model_name,
                               decision.seq, option)
            encode_end = self._clock()
        except (ConversionError, BackendError) as err:
            return None, report, f'probe {option[:MAX_QUOTED]!r} not sent: {err}'
        self._send(out)
        sent = replace(report, split_probe=option, bytes_sent=len(out.data),
                       encode_ms=(encode_end - encode_start) / 1e6)
        if probe.imgsz != choice.imgsz:
            return None, sent, ''
        answer, done = self._answer(sent, self._detect(model, model.tail(crossing), box), start,
                                    encode_end)
        return (answer, replace(done, inference_ms=done.inference_ms +
                                (encode_start - run_start) / 1e6)), sent, ''

    def _answer_whole(self, frame: Frame, report: InferenceReport, imgsz: int,
                      start: int) -> tuple[DetectionSet, InferenceReport]:
        """Answer a frame with the whole detector at ``imgsz``."""
        x, box = self.model.letterbox(frame.image, imgsz)
        run_start = self._clock()
        raw = self.model.tail(self.model.head(x))
        return self._answer(report, self._detect(self.model, raw, box), start, run_start)

    def _model_at(self, point: int, option: str) -> SplitModel:
        """Return the model prepared at split point ``point``, prepared on first use.

        Raises:
            ConversionError: ``split_option`` for a point the model does not have (the message
                names the valid ones).
        """
        if point not in self._at:
            try:
                self._at[point] = self.model.at(point)
            except ConfigError as err:
                raise ConversionError('split_option', f'{option}: {err}') from None
        return self._at[point]


@dataclass(frozen=True)
class _TailInput:
    """A checked message: its point's model, decoded crossing tensors, what detections need."""

    model: SplitModel
    crossing: dict[int, Any]
    letterbox: Letterbox
    imgsz: int
    decision_seq: int
    split: str


class SplitTail(_SplitRole):
    """Runs layers ``[k, end)`` on the tensors a head sent, and makes the detections.

    At ``split_point`` 0 it follows the head: each message's own point is run (the model
    prepared once per point), so the robot alone chooses k and the Pi needs no change when it
    does; otherwise a message split elsewhere is refused.

    Args:
        config: Parameters (``split_max_bytes`` bounds what a message may decode to).
        model: The detector, prepared at the split point.
        clock: Monotonic nanosecond clock for timings.
    """

    def __init__(self, config: EdgeConfig, model: SplitModel,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        super().__init__(config, model, clock)
        self._at: dict[int, SplitModel] = {model.point.index: model}

    def process(self, msg: Any, decision: Decision,
                waited_ns: int = 0) -> tuple[DetectionSet | None, InferenceReport]:
        """Run the tail on one split frame (see :class:`FrameProcessor`).

        ``decision`` is not applied: the head obeyed it, and the report carries the sequence
        number and the split option (``split``) the message names.

        Returns:
            The detections (None when the message was refused or failed) and the report:
            ``ok``, or ``failed`` saying why.
        """
        start = self._clock()
        report = self._report(msg, -1)
        config = self.config
        try:
            request = read_split_frame(str(msg.format), msg.data, config.split_max_bytes)
            given = self._check(request)
            report = replace(report, imgsz=given.imgsz, decision_seq=given.decision_seq,
                             split=given.split)
            tail_start = self._clock()
            raw = given.model.tail(given.crossing)
            dets = self._detect(given.model, raw, given.letterbox)
        except (ConversionError, BackendError) as err:
            return None, self._failed(report, err, start)
        return self._answer(report, dets, start, tail_start)

    def _check(self, request: SplitRequest) -> _TailInput:
        """Check a message against this model and the bounds, then decode its tensors.

        Raises:
            ConversionError: ``split_refused`` for other weights or another split point,
                ``split_request`` for what does not fit the model, ``tensor_*`` for tensors
                that do not decode within the bound.
        """
        split, params = request.split, request.parameters
        theirs = params.get(WEIGHTS)
        if theirs != self.model.weights_sha256:
            raise ConversionError('split_refused', f'the head runs weights '
                                  f'{str(theirs)[:16]!r}..., this tail '
                                  f'{self.model.weights_sha256[:16]!r}...: give both the same '
                                  'file')
        model = self._model_at(split.point)
        box = read_letterbox(split, params, model.stride)
        crossing = crossing_tensors(model, split, box, self.config.split_max_bytes)
        return _TailInput(model, crossing, box, int_param(params, IMGSZ, 1, MAX_INPUT_SIDE),
                          int_param(params, DECISION_SEQ, -1, 2**63 - 1, default=-1),
                          text_param(params, SPLIT, MAX_SPLIT_NAME))

    def _model_at(self, point: int) -> SplitModel:
        """Return the model prepared at a message's split point, if this tail runs it.

        Raises:
            ConversionError: ``split_refused`` for another point than a fixed one,
                ``split_request`` for a point the model does not have.
        """
        fixed = self.config.split_point
        if fixed and point != fixed:
            raise ConversionError('split_refused', f'the head splits at k={point}, this tail '
                                  f'at k={fixed}: set the same split_point (or 0 on the tail '
                                  'to follow the head)')
        if point not in self._at:
            try:
                self._at[point] = self.model.at(point)
            except ConfigError as err:
                raise bad_request(str(err)) from None
        return self._at[point]

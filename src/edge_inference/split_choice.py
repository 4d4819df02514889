"""What a split head runs on one frame: its own parameters, or the decision's split option.

The offload manager may choose the edge detector's split at runtime: a decision then names an
option ``<model>@<imgsz>:<k>/end:<precision>+<codec>`` (:mod:`adaptive_offload.split_option`)
in ``Decision.split``. A head follows one that names its own model and a decimal ``k`` to the
end; anything else (no option, another model, a name that does not parse) leaves it at its
parameters (``split_point``, ``split_encoding``, the decision's or configured ``imgsz``), with
a note saying why when the decision asked for something else. A head at ``split_point`` 0
runs the whole detector then: the manager chose the robot's own model. Whether the model has
``k`` is the head's to find out (:class:`edge_inference.split_roles.SplitHead`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.errors import ConfigError
from adaptive_offload.split_option import END, parse_spec
from edge_inference.inference import EdgeConfig

MAX_QUOTED = 80
"""Most characters of a decision's split option quoted in a note."""


@dataclass(frozen=True)
class HeadChoice:
    """The split point, input size and wire encoding of one frame, and why if not as asked.

    Attributes:
        point: k: the head runs layers ``[0, k)``.
        imgsz: Longest side of the network input.
        precision: Wire precision of the crossing tensors (``fp32``, ``fp16``, ``int8``).
        codec: Their compression (``zstd``, ``lz4``, ``none``).
        note: Why the decision's model or split option was not followed; empty when it was.
        whole: Run the whole detector on the robot instead (a head at ``split_point`` 0, on a
            decision that names no split of its model).
    """

    point: int
    imgsz: int
    precision: str
    codec: str
    note: str = ''
    whole: bool = False

    def option(self, model: str) -> str:
        """Return the split option name of this choice for ``model``: what the frame ran on.

        Empty for the whole detector, as an unsplit edge answer's ``split`` is.
        """
        if self.whole:
            return ''
        return option_name(model, self.imgsz, self.point, self.precision, self.codec)


def option_name(model: str, imgsz: int, point: int, precision: str, codec: str) -> str:
    """Return the edge detector's split option ``model@imgsz:k/end:precision+codec``."""
    return f'{model}@{imgsz}:{point}/{END}:{precision}+{codec}'


def choose(decision: Decision, config: EdgeConfig) -> HeadChoice:
    """Return what a head of ``config`` runs on a frame under ``decision``.

    On the split route ``Decision.split`` names the cloud model's option, not the edge
    detector's: a head there (a probe) runs its parameters without a note.

    Args:
        decision: The decision applied to the frame.
        config: The head's parameters.

    Returns:
        The decision's split option when it is one of this model to the end, else the
        parameters (at point 0: the whole detector), with a note for a model or option the head
        did not follow.
    """
    model = config.model_name
    notes = [] if decision.edge_model in ('', model) else \
        [f'model {decision.edge_model} not split here; used {model}']
    text = decision.split if decision.route is not Route.SPLIT else ''
    if text:
        named, why = _named(text, model)
        if named is not None:
            return replace(named, note='; '.join(notes))
        notes.append(why)
    imgsz = decision.edge_imgsz if decision.edge_imgsz > 0 else config.imgsz
    if text:
        notes[-1] += f'; ran k={config.split_point}' if config.split_point else \
            '; ran the whole model'
    return HeadChoice(config.split_point, imgsz, config.split_precision, config.split_codec,
                      '; '.join(notes), whole=not config.split_point)


def probe_choice(decision: Decision, config: EdgeConfig) -> tuple[HeadChoice | None, str]:
    """Return the split a head also sends a frame on that it answers itself, and why not.

    That is ``Decision.split_probe`` on the edge route, for a head at ``split_point`` 0 (the
    one that answers frames itself), when it names a split of the head's model to the end.

    Returns:
        The probe's choice, or None with a note when the decision names a probe this head
        cannot send (empty when it names none, or the head never runs whole).
    """
    text = decision.split_probe
    if decision.route is not Route.EDGE or not text or config.split_point:
        return None, ''
    named, why = _named(text, config.model_name)
    return named, '' if named is not None else f'probe {why}'


def _named(text: str, model: str) -> tuple[HeadChoice | None, str]:
    """Return the split of ``model`` to the end that the option ``text`` names, or why not."""
    try:
        spec = parse_spec(text)
    except ConfigError:
        return None, f'split {text[:MAX_QUOTED]!r} unreadable'
    if spec.arch == model and spec.middle_to == END and spec.point.isascii() and \
            spec.point.isdigit():
        return HeadChoice(int(spec.point), spec.imgsz, spec.precision, spec.codec), ''
    return None, f'split {text[:MAX_QUOTED]!r} is no split of {model} to {END}'

"""edge_inference node: the local detector on the camera stream, as a lifecycle node.

configure: read the parameters (again), create publishers and the decision subscription;
activate: load and warm up the model, subscribe to the camera; deactivate: unsubscribe and
release the model; cleanup: drop publishers. With ``autostart`` (default) the node configures
and activates itself, and a failure of either ends the process with exit code 1. With
``split_role`` it runs the head or the tail of a split detector (``edge_inference.split_roles``).
"""

from __future__ import annotations

import sys
from typing import Any

from adaptive_offload import graph, topics
from adaptive_offload import ros_interface as ros
from adaptive_offload.errors import AdaptiveOffloadError, ConfigError
from adaptive_offload.frame_worker import DecisionHolder, FrameWorker, ResultEmitter
from adaptive_offload.graph_codec import LabelMap
from adaptive_offload.params import ParameterSpec
from edge_inference.inference import edge_worker, EdgeConfig, EdgeCore, PARAMETERS
from edge_inference.split_roles import build_core
from fault_injection.live import ObeyedFaults
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn


class EdgeInferenceNode(LifecycleNode):
    """Runs the detector on the newest frame; publishes detections, telemetry, label map."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('edge_inference', **kwargs)
        ros.declare_parameters(self, PARAMETERS)
        self._config: EdgeConfig | None = None
        self._core: EdgeCore | None = None
        self._worker: FrameWorker | None = None
        self._pubs: ros.Publishers | None = None
        self._subs: list[Any] = []
        self._camera: list[Any] = []
        self._failure = ''
        self._quiet = False
        ros.on_parameters_set(self, PARAMETERS, self._apply, self._refuse)
        if self.get_parameter('autostart').value:
            # A failure here ends the process with one fatal line (run_node), not two.
            self._quiet = True
            try:
                ros.autostart(self, lambda: self._failure)
            finally:
                self._quiet = False

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read and check the parameters, create publishers and the decision subscription."""
        try:
            self._config = EdgeConfig.from_params(ros.current_parameters(self, PARAMETERS))
        except AdaptiveOffloadError as err:
            return self._fail(err)
        config = self._config
        misplaced = topics.misplaced_source(config.source_name, self.get_namespace())
        if misplaced:
            self.get_logger().warning(misplaced)
        self._graph = graph.edge_inference(config.image_topic, config.compressed,
                                           config.source_name, config.publish_annotated,
                                           config.obey_faults, config.split_role,
                                           config.split_topic)
        self._decisions = DecisionHolder(config.fallback_decision())
        self._faults = ObeyedFaults(lambda: ros.now_ns(self)) if config.obey_faults else None
        self._pubs = ros.Publishers(self, self._graph, lifecycle=True)
        self._subs = ros.subscribe(self, self._graph,
                                   {'decision': self._decisions, 'faults': self._faults},
                                   only=('decision', 'faults'))
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load and warm up the model, then subscribe to the camera."""
        config, pubs = self._config, self._pubs
        if config is None or pubs is None:  # rclpy only activates a configured node
            return self._fail(ConfigError('edge_inference: activated before configure'))
        try:  # a split head publishes its tensors itself, from the worker thread
            core = self._core = build_core(config, lambda out: pubs.publish('split', out),
                                           lambda: pubs.subscribers('split') > 0)
        except AdaptiveOffloadError as err:
            return self._fail(err)
        result = super().on_activate(state)
        pubs.publish('label_info', LabelMap(core.class_names(), config.conf, ros.now_ns(self)))
        worker = self._worker = edge_worker(
            core, self._decisions, ResultEmitter(pubs.publish, config.publish_annotated),
            lambda: ros.now_ns(self), self._faults)
        worker.start('edge-inference')
        frames = [p.name for p in self._graph.inputs if p.kind == 'image']  # camera or split
        self._camera = ros.subscribe(self, self._graph, dict.fromkeys(frames, worker),
                                     only=frames)
        point = f'k={config.split_point}' if config.split_point else \
            ("the head's k" if config.split_role == 'tail' else
             "the decision's k (else the whole model)")
        role = f', split {config.split_role} at {point}' if config.split_role else ''
        self.get_logger().info(f'{config.model_name} ({config.model}) on {config.device}, '
                               f'imgsz {config.imgsz}, input {self._camera[0].topic_name}{role}')
        return result

    def _fail(self, err: Exception) -> TransitionCallbackReturn:
        self._failure = str(err)
        if not self._quiet:  # a transition asked for by ros2 lifecycle: say why it failed
            self.get_logger().error(self._failure)
        return TransitionCallbackReturn.FAILURE

    def _apply(self, values: dict[str, Any]) -> None:
        if self._core is not None:  # else configure reads them
            config = self._core.reconfigure(values)
            self._decisions.set_fallback(config.fallback_decision())

    def _refuse(self, spec: ParameterSpec) -> str:
        if self._config is None:
            return ''
        return f'{spec.name} is read on configure: deactivate and clean up the node first'

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking frames and release the model."""
        self._release()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop publishers and the decision subscription."""
        self._drop_io()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything on the way out."""
        self._drop_io()
        return super().on_shutdown(state)

    def _release(self) -> None:
        self._camera = ros.unsubscribe(self, self._camera)
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self._core = None  # the worker held the core and so the models

    def _drop_io(self) -> None:
        self._release()
        if self._pubs is not None:
            self._pubs.destroy()
            self._pubs = None
        self._subs = ros.unsubscribe(self, self._subs)
        self._config = None

    def destroy_node(self) -> None:
        """Stop the worker before the node goes."""
        self._release()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run adaptive_offload edge_inference``."""
    return ros.run_node(EdgeInferenceNode, 'edge_inference', args)


if __name__ == '__main__':
    sys.exit(main())

"""cloud_bridge node: sends the frames the decision selects to the V2 inference service."""

from __future__ import annotations

import sys
from typing import Any

from adaptive_offload import graph
from adaptive_offload import ros_interface as ros
from adaptive_offload.datatypes import Decision
from adaptive_offload.frame_worker import DecisionHolder, FrameWorker, ResultEmitter
from cloud_bridge.bridge_config import CloudConfig, PARAMETERS
from rclpy.node import Node


class CloudBridgeNode(Node):
    """Subscribes to the camera; publishes the service's detections and per-frame telemetry."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('cloud_bridge', **kwargs)
        config = CloudConfig.from_params(ros.declare_parameters(self, PARAMETERS))
        self._transport = config.make_transport()
        # Until the manager speaks, the safe default keeps every frame off the network.
        decisions = DecisionHolder(Decision.safe_default(deadline_ms=config.deadline_ms))
        node_graph = graph.cloud_bridge(config.image_topic, config.compressed,
                                        config.sampled_sources())
        pubs = ros.Publishers(self, node_graph)
        # Split heads load here, before the first frame, not on the first split decision.
        self._split = config.make_split()
        bridge = config.make_bridge(self._transport, self._split)
        self._worker = FrameWorker(bridge, decisions,
                                   ResultEmitter(pubs.publish), lambda: ros.now_ns(self),
                                   workers=config.max_in_flight, pending=config.max_pending)
        subs = ros.subscribe(self, node_graph, {'camera': self._worker, 'decision': decisions,
                                                '*': bridge})
        self._worker.start('cloud-bridge')
        heads = f'; split heads {", ".join(config.splits())}' if self._split else ''
        self.get_logger().info(f'{subs[0].topic_name} -> {config.url} (model {config.model}'
                               f'{heads})')

    def destroy_node(self) -> None:
        """Stop the worker and close connections before the node goes."""
        self._worker.stop()
        self._transport.close()
        if self._split is not None:
            self._split.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run adaptive_offload cloud_bridge``."""
    return ros.run_node(CloudBridgeNode, 'cloud_bridge', args)


if __name__ == '__main__':
    sys.exit(main())

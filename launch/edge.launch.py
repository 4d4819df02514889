"""One namespaced edge_inference node, e.g. on a Raspberry Pi next to the robot.

The same file runs the whole detector (the default), or one part of a split detector: the
head on the robot (``split_role:=head``), the tail on the Pi (``split_role:=tail``). The split
arguments override the parameter file only when given.
"""

from edge_inference.inference import launch_argument
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'adaptive_offload'
# Launch arguments that override the edge_inference parameters of their names when not empty.
OVERRIDES = ('model', 'split_role', 'split_point', 'split_encoding', 'split_topic')


def _edge_node(context: LaunchContext) -> list[Node]:
    """Return the edge node, with the overrides the launch arguments give."""
    namespace = LaunchConfiguration('namespace')
    overrides = {}
    for name in OVERRIDES:
        value = LaunchConfiguration(name).perform(context)
        if value:  # typed as the parameter; bad text: one line naming the argument
            overrides[name] = launch_argument(name, value)
    if 'model' in overrides:  # the name follows the file given, not the parameter file's
        overrides['model_name'] = ''
    return [Node(package=PACKAGE, executable='edge_inference', name='edge_inference',
                 namespace=namespace, output='screen', emulate_tty=True,
                 parameters=[LaunchConfiguration('params_file'),
                             {'use_sim_time': LaunchConfiguration('use_sim_time'),
                              'source_name': namespace, **overrides}])]


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments and the edge node; its source name is its namespace."""
    arguments = [
        DeclareLaunchArgument('namespace', default_value='pi',
                              description='Namespace and source name of this edge target '
                                          '(list it in offload_manager edge_sources)'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), 'config',
                                                'params.yaml']),
            description='ROS 2 parameter file'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock'),
        DeclareLaunchArgument('model', default_value='',
                              description='Weights file (its stem names it); empty: the '
                                          "parameter file's"),
        DeclareLaunchArgument('split_role', default_value='',
                              description='head (robot) or tail (Pi) of a split detector; '
                                          "empty: the parameter file's (the whole detector)"),
        DeclareLaunchArgument('split_point', default_value='',
                              description='k: the head runs layers [0, k), the tail the rest; '
                                          'the same on both, or 0 on the tail to run '
                                          'whatever point the head chose'),
        DeclareLaunchArgument('split_encoding', default_value='',
                              description='Head: fp32, fp16 or int8, then +zstd, +lz4 or +none'),
        DeclareLaunchArgument('split_topic', default_value='',
                              description="Tail: the head's topic, e.g. /robot/edge/split"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_edge_node)])

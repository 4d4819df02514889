"""One namespaced edge_inference node, e.g. on a Raspberry Pi next to the robot."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'adaptive_offload'


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments and the edge node; its source name is its namespace."""
    namespace = LaunchConfiguration('namespace')
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
    ]
    node = Node(package=PACKAGE, executable='edge_inference', name='edge_inference',
                namespace=namespace, output='screen', emulate_tty=True,
                parameters=[LaunchConfiguration('params_file'),
                            {'use_sim_time': LaunchConfiguration('use_sim_time'),
                             'source_name': namespace}])
    return LaunchDescription(arguments + [node])

"""All robot-side nodes: edge_inference, cloud_bridge, offload_manager, health_monitor."""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'adaptive_offload'


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments and the four nodes."""
    params_file = LaunchConfiguration('params_file')
    use_sim_time = LaunchConfiguration('use_sim_time')
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            'params_file', default_value=PathJoinSubstitution([share, 'config', 'params.yaml']),
            description='ROS 2 parameter file of the nodes'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock (true when playing a bag with --clock)'),
        DeclareLaunchArgument('cloud', default_value='true',
                              description='Start cloud_bridge'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Start rviz2 with config/adaptive_offload.rviz'),
    ]
    parameters = [params_file, {'use_sim_time': use_sim_time}]
    nodes = [
        Node(package=PACKAGE, executable='edge_inference', name='edge_inference',
             parameters=parameters, output='screen', emulate_tty=True),
        Node(package=PACKAGE, executable='cloud_bridge', name='cloud_bridge',
             parameters=parameters, output='screen', emulate_tty=True,
             condition=IfCondition(LaunchConfiguration('cloud'))),
        Node(package=PACKAGE, executable='offload_manager', name='offload_manager',
             parameters=parameters, output='screen', emulate_tty=True),
        Node(package=PACKAGE, executable='health_monitor', name='health_monitor',
             parameters=parameters, output='screen', emulate_tty=True),
        Node(package='rviz2', executable='rviz2', name='rviz2',
             arguments=['-d', PathJoinSubstitution([share, 'config', 'adaptive_offload.rviz'])],
             parameters=[{'use_sim_time': use_sim_time}],
             condition=IfCondition(LaunchConfiguration('rviz'))),
    ]
    return LaunchDescription(arguments + nodes)

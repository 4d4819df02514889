"""All robot-side nodes: edge_inference, cloud_bridge, offload_manager, health_monitor.

A node that exits (a parameter it refuses, a model that does not load, a crash) stops the
others and the launch (``required:=false`` keeps them running), so that a supervisor (systemd,
a container's restart policy) sees perception down instead of a graph with a node missing.

``scenario:=cloud_outage_10s`` (a shipped name or a file) rehearses that scenario's faults on
the running graph: the health monitor injects them (network faults through a fault proxy on
``fault_proxy_port`` that the bridge's url is pointed at; process faults on the service of the
url, when it runs on this host, or on ``service_port``), and the edge and the manager obey
announced stalls and deaths. Nothing is injected without a scenario.
"""

from typing import Any

from adaptive_offload.params import load_params_file
from fault_injection.live import rehearsal_parameters
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'adaptive_offload'


def _nodes(context: LaunchContext) -> list[Any]:
    params_file = LaunchConfiguration('params_file').perform(context)
    use_sim_time = LaunchConfiguration('use_sim_time')
    scenario = LaunchConfiguration('scenario').perform(context)
    rehearsal = rehearsal_parameters(
        load_params_file(params_file) if scenario else {}, scenario,
        int(LaunchConfiguration('fault_proxy_port').perform(context)),
        int(LaunchConfiguration('service_port').perform(context)))

    def parameters(node: str) -> list[Any]:
        return [params_file, {'use_sim_time': use_sim_time}, rehearsal.get(node, {})]

    def stop_all(node: str) -> list[Any]:
        return [Shutdown(reason=f'{node} exited',
                         condition=IfCondition(LaunchConfiguration('required')))]

    return [
        Node(package=PACKAGE, executable='edge_inference', name='edge_inference',
             parameters=parameters('edge_inference'), output='screen', emulate_tty=True,
             on_exit=stop_all('edge_inference')),
        Node(package=PACKAGE, executable='cloud_bridge', name='cloud_bridge',
             parameters=parameters('cloud_bridge'), output='screen', emulate_tty=True,
             on_exit=stop_all('cloud_bridge'),
             condition=IfCondition(LaunchConfiguration('cloud'))),
        Node(package=PACKAGE, executable='offload_manager', name='offload_manager',
             parameters=parameters('offload_manager'), output='screen', emulate_tty=True,
             on_exit=stop_all('offload_manager')),
        Node(package=PACKAGE, executable='health_monitor', name='health_monitor',
             parameters=parameters('health_monitor'), output='screen', emulate_tty=True,
             on_exit=stop_all('health_monitor')),
    ]


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments, the four nodes and rviz."""
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
        DeclareLaunchArgument('required', default_value='true',
                              description='A node that exits stops the others and the launch'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Start rviz2 with config/adaptive_offload.rviz'),
        DeclareLaunchArgument('scenario', default_value='',
                              description='Fault scenario to rehearse (file or shipped name, '
                                          'e.g. cloud_outage_10s); empty: no faults'),
        DeclareLaunchArgument('fault_proxy_port', default_value='18081',
                              description="Port of the fault proxy the bridge's url is "
                                          'pointed at for network faults'),
        DeclareLaunchArgument('service_port', default_value='0',
                              description='Port of the service on this host for process '
                                          "faults; 0: the bridge url's port"),
    ]
    rviz = Node(package='rviz2', executable='rviz2', name='rviz2',
                arguments=['-d', PathJoinSubstitution([share, 'config',
                                                       'adaptive_offload.rviz'])],
                parameters=[{'use_sim_time': use_sim_time}],
                condition=IfCondition(LaunchConfiguration('rviz')))
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes), rviz])

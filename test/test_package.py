"""Package-level checks: ROS import boundary, parameter files, launch files, colcon."""

from __future__ import annotations

import ast
import json
from pathlib import Path
import shutil
import subprocess
import sys

from adaptive_offload import graph, topics
from adaptive_offload.params import load_params_file, node_params, resolve
from cloud_bridge.bridge_config import PARAMETERS as CLOUD
from edge_inference.inference import PARAMETERS as EDGE
from health_monitor.monitor import PARAMETERS as HEALTH
from helpers import child_env
from offload_manager.manager import PARAMETERS as MANAGER
import pytest

ROOT = Path(__file__).resolve().parents[1]
NODES = {'edge_inference': EDGE, 'cloud_bridge': CLOUD, 'offload_manager': MANAGER,
         'health_monitor': HEALTH}
ROS_MODULES = ('rclpy', 'launch', 'launch_ros', 'rosidl_runtime_py', 'rcl_interfaces',
               'builtin_interfaces', 'std_msgs', 'sensor_msgs', 'vision_msgs',
               'diagnostic_msgs', 'geometry_msgs', 'visualization_msgs', 'cv_bridge')
ROS_GLUE = {'node.py', 'ros_interface.py'}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


def test_only_node_modules_import_ros() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / 'src').rglob('*.py'))
                 if p.name not in ROS_GLUE and _imports(p) & set(ROS_MODULES)]
    assert offenders == []
    glue = [p for p in (ROOT / 'src').rglob('*.py') if p.name in ROS_GLUE]
    assert len(glue) == 5 and all(_imports(p) & {'rclpy'} for p in glue)


def test_cores_import_without_ros() -> None:
    code = ('import sys, importlib\n'
            'for m in ["offload_runtime.replay", "offload_runtime.cli",'
            ' "edge_inference.inference", "cloud_bridge.bridge_config", "offload_manager.manager",'
            ' "health_monitor.monitor"]:\n'
            '    importlib.import_module(m)\n'
            'assert "rclpy" not in sys.modules and "ultralytics" not in sys.modules\n')
    env = child_env()
    subprocess.run([sys.executable, '-c', code], check=True, env=env, timeout=120)


def test_params_yaml_names_only_declared_parameters_of_the_right_type() -> None:
    params = load_params_file(ROOT / 'config' / 'params.yaml')
    assert set(params) == set(NODES)
    for node, specs in NODES.items():
        given = node_params(params, node)
        values = resolve(specs, given)  # raises on an unknown name or a wrong type
        assert set(given) == set(values), f'{node}: params.yaml should list every parameter'


def test_params_yaml_agrees_with_the_declared_defaults() -> None:
    params = load_params_file(ROOT / 'config' / 'params.yaml')
    for node, specs in NODES.items():
        given = node_params(params, node)
        differ = {s.name for s in specs if s.check(given[s.name]) != s.default}
        assert differ <= {'model_name'}, f'{node}: {differ} differ from the code defaults'


def _launch_nodes(path: Path) -> list[dict[str, str]]:
    tree = ast.parse(path.read_text(), str(path))
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert 'generate_launch_description' in functions, path
    constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                 and isinstance(n.value, ast.Constant) for t in n.targets}

    def value(node: ast.expr) -> object:
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return node.value if isinstance(node, ast.Constant) else None

    return [{k.arg: value(k.value) for k in call.keywords}
            for call in ast.walk(tree)
            if isinstance(call, ast.Call) and getattr(call.func, 'id', '') == 'Node']


def test_launch_files_start_declared_executables() -> None:
    setup = (ROOT / 'setup.py').read_text()
    files = sorted((ROOT / 'launch').glob('*.launch.py'))
    assert {f.name for f in files} >= {'robot.launch.py', 'edge.launch.py'}
    started = set()
    for path in files:
        text = path.read_text()
        assert "'params_file'" in text and "'use_sim_time'" in text, path
        for node in _launch_nodes(path):
            if node.get('package') == 'adaptive_offload':
                assert f"'{node['executable']} = " in setup
                assert node['name'] in NODES
                started.add(node['name'])
    assert started == set(NODES)


def test_rviz_config_shows_input_and_annotated_images() -> None:
    text = (ROOT / 'config' / 'adaptive_offload.rviz').read_text()
    assert 'Value: /camera/image_raw' in text and 'Value: /offload/annotated' in text


def _panels(tree: object) -> set[str]:
    if isinstance(tree, str):
        return {tree}
    assert isinstance(tree, dict)
    return _panels(tree['first']) | _panels(tree['second'])


def test_foxglove_layout_shows_the_output_bags_topics() -> None:
    layout = json.loads((ROOT / 'config' / 'foxglove_layout.json').read_text())
    assert _panels(layout['layout']) == set(layout['configById'])
    shown = set()
    for config in layout['configById'].values():
        path = config.get('topicPath') or config.get('topicToRender') or \
            config.get('imageMode', {}).get('imageTopic')
        shown.add(path.split('.')[0])
    assert shown == {topics.CAMERA, topics.DETECTIONS, topics.FRAMES, topics.DECISION,
                     topics.DIAGNOSTICS, topics.HEALTH_FAULTS, topics.CLOUD_TELEMETRY}
    # The published boxes are drawn over the camera image, matched to each frame by stamp.
    image = layout['configById']['Image!camera']['imageMode']
    [annotations] = image['annotations']
    assert (annotations['topic'], annotations['schemaName']) == (
        topics.ANNOTATIONS, graph.IMAGE_MARKER)
    assert annotations['settings']['visible'] and image['synchronize']


def _colcon() -> str:
    beside = Path(sys.executable).parent / 'colcon'
    return str(beside) if beside.exists() else shutil.which('colcon') or ''


@pytest.mark.skipif(not _colcon(), reason='colcon not installed (requirements-dev.txt has it)')
def test_colcon_build_and_test(tmp_path: Path) -> None:
    """The package builds and tests with colcon (no ROS needed for ament_python)."""
    colcon = _colcon()
    common = ['--base-paths', str(ROOT), '--build-base', str(tmp_path / 'build'),
              '--install-base', str(tmp_path / 'install')]
    subprocess.run([colcon, 'build', *common], cwd=tmp_path, check=True, timeout=600,
                   capture_output=True)
    lib = tmp_path / 'install' / 'adaptive_offload' / 'lib' / 'adaptive_offload'
    expected = {'edge_inference', 'cloud_bridge', 'offload_manager', 'health_monitor',
                'adaptive-offload'}
    assert {p.name for p in lib.iterdir()} >= expected
    share = tmp_path / 'install' / 'adaptive_offload' / 'share' / 'adaptive_offload'
    for rel in ('package.xml', 'launch/robot.launch.py', 'launch/edge.launch.py',
                'config/params.yaml', 'config/adaptive_offload.rviz',
                'models/yolov8n-shapes.pt', 'models/rcnn-shapes.pt', 'models/accuracy.json'):
        assert (share / rel).is_file(), rel
    index = tmp_path / 'install' / 'adaptive_offload' / 'share' / 'ament_index'
    assert (index / 'resource_index' / 'packages' / 'adaptive_offload').is_file()
    subprocess.run([colcon, 'test', *common, '--pytest-args',
                    str(ROOT / 'test' / 'offload_manager' / 'test_frame_outcomes.py')],
                   cwd=tmp_path, check=True, timeout=600, capture_output=True)
    result = subprocess.run([colcon, 'test-result', '--test-result-base',
                             str(tmp_path / 'build')], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and ' 0 failures' in result.stdout
    assert 'Summary: 0 tests' not in result.stdout

"""The layers of src/ point down: no module imports a package above it or a sibling role."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / 'src'

# Bottom to top. A package may import packages of a lower layer only; packages that share a
# layer (the four roles) never import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ('adaptive_offload',),       # ground: records, names, params, conversions, worker, graph
    ('rcnn_service',),           # the R-CNN service (Open Inference Protocol server)
    ('fault_injection',),        # scenarios, injectors, fault measures
    ('edge_inference', 'cloud_bridge', 'offload_manager', 'health_monitor'),  # the roles
    ('offload_runtime',),        # replay, simulator, evaluation, bag I/O, CLI
)
LAYER_OF = {pkg: level for level, pkgs in enumerate(LAYERS) for pkg in pkgs}


def imported_modules(source: str, filename: str = '<src>') -> list[tuple[int, str]]:
    """Return (line, module) of every absolute import, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(package: str, source: str, filename: str = '<src>') -> list[str]:
    """Return the imports of one module of ``package`` that point up or across."""
    out = []
    for line, module in imported_modules(source, filename):
        target = module.split('.')[0]
        if target == package or target not in LAYER_OF:
            continue
        if LAYER_OF[target] >= LAYER_OF[package]:
            out.append(f'{filename}:{line}: {package} (layer {LAYER_OF[package]}) imports '
                       f'{module} (layer {LAYER_OF[target]})')
    return out


def test_every_source_package_has_a_layer() -> None:
    packages = {p.parent.name for p in SRC.glob('*/__init__.py')}
    assert packages == set(LAYER_OF)


def test_imports_point_down_only() -> None:
    found = []
    for path in sorted(SRC.rglob('*.py')):
        package = path.relative_to(SRC).parts[0]
        found += violations(package, path.read_text(), str(path.relative_to(ROOT)))
    assert found == []


def test_the_check_catches_upward_cross_role_and_lazy_imports() -> None:
    assert violations('adaptive_offload', 'from offload_runtime.replay import Replay\n')
    assert violations('cloud_bridge', 'import health_monitor.monitor\n')
    lazy = 'def f():\n    from offload_manager.manager import OffloadManager\n'
    assert violations('edge_inference', lazy)
    assert violations('fault_injection', 'from cloud_bridge.transport import CloudReply\n')
    assert not violations('offload_runtime', 'from cloud_bridge.bridge import CloudBridge\n')
    assert not violations('fault_injection', 'from rcnn_service.service import ServiceConfig\n')
    assert not violations('health_monitor', 'import numpy\nfrom adaptive_offload import topics\n')

"""Kubernetes manifests and the container file, validated offline."""

from __future__ import annotations

import json
from pathlib import Path
import re
from typing import Any

import kubernetes_validate
from offload_runtime.autoscalers import HpaSettings
from offload_runtime.cli import build_parser
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / 'deploy'
CORE = ('deployment.yaml', 'service.yaml', 'hpa.yaml', 'pdb.yaml',
        'prometheus-adapter-rules.yaml')


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / 'kubernetes' / name).read_text())


@pytest.mark.parametrize('name', CORE)
def test_core_manifests_validate_strictly(name: str) -> None:
    kubernetes_validate.validate(_load(name), kubernetes_validate.latest_version(), strict=True)


def test_hpa_is_autoscaling_v2_on_the_deployment() -> None:
    hpa, deployment = _load('hpa.yaml'), _load('deployment.yaml')
    assert hpa['apiVersion'] == 'autoscaling/v2'
    assert hpa['spec']['scaleTargetRef']['name'] == deployment['metadata']['name']
    assert deployment['spec']['replicas'] == hpa['spec']['minReplicas']


def _exported_metric_names() -> set[str]:
    """Names of the series a service's /metrics holds once it has answered and refused."""
    from prometheus_client import CollectorRegistry
    from rcnn_service.guard import Overloaded
    from rcnn_service.service_metrics import exposition, ServiceMetrics

    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    metrics.watch(lambda: 3, lambda: 40.0)
    metrics.offered.inc()
    metrics.answered(0.01, in_budget=True)
    metrics.refused(Overloaded('budget', 'r1', 0.1, 'test'))
    return {line.split('{')[0].split(' ')[0] for line in exposition(registry).splitlines()
            if line and not line.startswith('#')}


def test_the_hpa_scales_on_metrics_the_adapter_derives_from_what_the_service_exports() -> None:
    hpa = _load('hpa.yaml')['spec']['metrics']
    pods = [m['pods']['metric']['name'] for m in hpa if m['type'] == 'Pods']
    assert pods == ['adaptive_offload_offered_utilisation', 'adaptive_offload_queue_wait_seconds',
                    'adaptive_offload_refusals_per_second']
    [cpu] = [m for m in hpa if m['type'] == 'Resource']  # secondary only
    assert cpu['resource']['name'] == 'cpu'
    assert cpu['resource']['target']['averageUtilization'] >= 80
    rules = yaml.safe_load(_load('prometheus-adapter-rules.yaml')['data']['config.yaml'])['rules']
    exported = _exported_metric_names()
    assert {r['name']['as'] for r in rules} == set(pods)
    for rule in rules:
        queried = set(re.findall(r'(adaptive_offload_\w+)\{', rule['metricsQuery']))
        series = re.match(r"'?(\w+)\{", rule['seriesQuery']).group(1)
        assert queried and queried | {series} <= exported, (queried, exported)
        assert re.fullmatch(rule['name']['matches'].strip('^$'), series)
        assert rule['resources']['overrides']['pod'] == {'resource': 'pod'}


def _quantity(value: str) -> float:
    """Read a Kubernetes quantity such as ``700m`` or ``2``."""
    return int(value[:-1]) / 1000 if value.endswith('m') else float(value)


def test_the_hpa_sizes_for_the_offered_load_with_the_simulators_targets() -> None:
    """The primary metric is the offered utilisation, on the targets the simulated HPA uses."""
    hpa = _load('hpa.yaml')['spec']['metrics']
    targets = {m['pods']['metric']['name']: _quantity(m['pods']['target']['averageValue'])
               for m in hpa if m['type'] == 'Pods'}
    assert hpa[0]['pods']['metric']['name'] == 'adaptive_offload_offered_utilisation'
    assert hpa[-1]['type'] == 'Resource'  # CPU last
    sim = HpaSettings()
    assert targets == {'adaptive_offload_offered_utilisation': sim.target_offered_utilisation,
                       'adaptive_offload_queue_wait_seconds': sim.target_wait_s,
                       'adaptive_offload_refusals_per_second': sim.target_refusals_per_s}
    rules = yaml.safe_load(_load('prometheus-adapter-rules.yaml')['data']['config.yaml'])['rules']
    [rule] = [r for r in rules if r['name']['as'] == 'adaptive_offload_offered_utilisation']
    # Per pod: the offered rate over the simulator's metric window, over the capacity gauge.
    numerator, denominator = re.split(r'\s/\s', rule['metricsQuery'])
    window = f'[{sim.metric_window_s / 60:g}m]'
    assert re.search(r'rate\(adaptive_offload_offered_total\{[^}]*\}' + re.escape(window),
                     numerator)
    assert 'adaptive_offload_capacity_images_per_second{' in denominator
    assert 'rate(' not in denominator
    for part in (numerator, denominator):
        assert part.rstrip().endswith('by (<<.GroupBy>>)')


def test_prometheus_scrapes_the_metrics_port_and_a_drain_keeps_a_pod_serving() -> None:
    deployment = _load('deployment.yaml')
    template = deployment['spec']['template']
    notes = template['metadata']['annotations']
    [container] = template['spec']['containers']
    ports = {p['name']: p['containerPort'] for p in container['ports']}
    assert notes['prometheus.io/scrape'] == 'true'
    assert int(notes['prometheus.io/port']) == ports['metrics']
    pdb = _load('pdb.yaml')['spec']
    assert pdb['selector']['matchLabels'].items() <= template['metadata']['labels'].items()
    assert 1 <= pdb['minAvailable'] < _load('hpa.yaml')['spec']['minReplicas']


def test_inference_service_containers_are_valid_kubernetes_containers() -> None:
    """Validate the predictor's Container and Volume objects strictly inside a Pod.

    kubernetes-validate has no schema for KServe's CRD, but its predictor holds standard ones.
    """
    isvc = _load('inferenceservice.yaml')
    assert (isvc['apiVersion'], isvc['kind']) == ('serving.kserve.io/v1beta1',
                                                  'InferenceService')
    predictor = isvc['spec']['predictor']
    pod = {'apiVersion': 'v1', 'kind': 'Pod', 'metadata': {'name': 'check'},
           'spec': {'containers': predictor['containers'], 'volumes': predictor['volumes']}}
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        pod['spec']['containers'][0]['imagePullPolicyy'] = 'Always'
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_manifests_run_the_image_the_containerfile_builds_with_valid_arguments() -> None:
    containerfile = (DEPLOY / 'Containerfile').read_text().replace('\\\n', ' ')
    [line] = [ln for ln in containerfile.splitlines() if ln.startswith('ENTRYPOINT')]
    entrypoint = json.loads(line.split(None, 1)[1])
    assert entrypoint[:2] == ['adaptive-offload', 'serve']
    deployment = _load('deployment.yaml')['spec']['template']['spec']['containers'][0]
    kserve = _load('inferenceservice.yaml')['spec']['predictor']['containers'][0]
    assert deployment['image'] == kserve['image']
    parser = build_parser()
    for container in (deployment, kserve):
        args = parser.parse_args([*entrypoint[1:], *container['args']])
        assert args.checkpoint.startswith('/models/') and args.runtime == 'mlserver'
        assert args.port in {p['containerPort'] for p in container['ports']}
        assert container['readinessProbe']['httpGet']['path'] == '/v2/health/ready'
    assert deployment['livenessProbe']['httpGet']['path'] == '/v2/health/live'
    ports = {p['name']: p['containerPort'] for p in deployment['ports']}
    assert ports == {'http': args.port, 'grpc': args.grpc_port, 'metrics': args.metrics_port}


def test_tokens_come_from_a_mounted_secret_never_from_args_or_env_values() -> None:
    deployment = _load('deployment.yaml')['spec']['template']['spec']
    kserve = _load('inferenceservice.yaml')['spec']['predictor']
    parser = build_parser()
    for pod in (deployment, kserve):
        [container] = pod['containers']
        assert '--token' not in container['args']
        assert all('value' not in env for env in container.get('env', []))
        path = parser.parse_args(['serve', *container['args']]).token_file
        volumes = {v['name']: v for v in pod['volumes']}
        [mount] = [m for m in container['volumeMounts'] if path.startswith(m['mountPath'] + '/')]
        secret = volumes[mount['name']]['secret']
        assert secret['secretName'] == 'adaptive-offload-tokens' and mount['readOnly']
        assert path == f'{mount["mountPath"]}/{secret["items"][0]["path"]}'


def test_the_deployment_serves_tls_from_a_tls_secret_its_user_can_read() -> None:
    pod = _load('deployment.yaml')['spec']['template']['spec']
    [container] = pod['containers']
    args = build_parser().parse_args(['serve', *container['args']])
    volumes = {v['name']: v for v in pod['volumes']}
    for path, key in ((args.tls_cert, 'tls.crt'), (args.tls_key, 'tls.key')):
        [mount] = [m for m in container['volumeMounts']
                   if path == f'{m["mountPath"]}/{key}']  # the keys of `kubectl create secret tls`
        assert mount['readOnly'] and volumes[mount['name']]['secret']['secretName'] == \
            'adaptive-offload-tls'
    for probe in ('readinessProbe', 'livenessProbe', 'startupProbe'):
        assert container[probe]['httpGet']['scheme'] == 'HTTPS'
    # Secret files belong to root: the service's user reads them through the pod's group.
    user = pod['securityContext']['runAsUser']
    assert pod['securityContext']['fsGroup'] == user
    assert all(v['secret']['defaultMode'] & 0o040 for v in volumes.values() if 'secret' in v)

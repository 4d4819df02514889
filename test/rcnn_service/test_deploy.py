"""Kubernetes manifests and the container file, validated offline."""

from __future__ import annotations

import json
from pathlib import Path
import re
from typing import Any

import jsonschema
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
    assert pods == ['adaptive_offload_offered_utilisation', 'adaptive_offload_busy_share',
                    'adaptive_offload_queue_wait_seconds', 'adaptive_offload_refusals_per_second']
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
                       'adaptive_offload_busy_share': sim.target_busy_share,
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


# KServe's predictor is a PodSpec plus these fields of its ComponentExtensionSpec
# (pkg/apis/serving/v1beta1/component.go, v0.16.0 to v0.20.0) and model fields (model,
# sklearn, ...) that a custom container does not use.
KSERVE_COMPONENT_FIELDS = frozenset({
    'minReplicas', 'maxReplicas', 'scaleTarget', 'scaleMetric', 'scaleMetricType', 'autoScaling',
    'containerConcurrency', 'timeout', 'canaryTrafficPercent', 'logger', 'batcher', 'labels',
    'annotations', 'deploymentStrategy'})


def test_inference_service_predictor_is_a_valid_pod_spec_plus_kserve_fields() -> None:
    """Validate the predictor's PodSpec fields strictly inside a Pod.

    kubernetes-validate has no schema for KServe's CRD, but its predictor holds standard ones;
    the rest must be KServe's own component fields (their schema: test below).
    """
    isvc = _load('inferenceservice.yaml')
    assert (isvc['apiVersion'], isvc['kind']) == ('serving.kserve.io/v1beta1',
                                                  'InferenceService')
    predictor = isvc['spec']['predictor']
    spec = {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS}
    assert {'containers', 'volumes', 'securityContext'} <= spec.keys()
    pod = {'apiVersion': 'v1', 'kind': 'Pod', 'metadata': {'name': 'check'}, 'spec': spec}
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        pod['spec']['containers'][0]['imagePullPolicyy'] = 'Always'
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {'type': 'object', 'properties': properties, 'required': list(required),
            'additionalProperties': False}


# spec.predictor.autoScaling of KServe's InferenceService CRD
# (config/crd/full/serving.kserve.io_inferenceservices.yaml, the same from v0.16.0 to v0.20.0),
# unknown fields refused as the API server's strict field validation refuses them. A quantity
# is an integer or a string: KServe refuses a YAML float such as 0.7.
_QUANTITY = {'anyOf': [{'type': 'integer'}, {
    'type': 'string', 'pattern': r'^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))'
                                 r'(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)'
                                 r'|(\.[0-9]+))))?$'}]}
_STRING = {'type': 'string'}
_TARGET = _object({'type': {'enum': ['Utilization', 'Value', 'AverageValue']},
                   'value': _QUANTITY, 'averageValue': _QUANTITY,
                   'averageUtilization': {'type': 'integer'}})
_SCALING_RULES = _object({
    'policies': {'type': 'array', 'items': _object(
        {'type': _STRING, 'value': {'type': 'integer'}, 'periodSeconds': {'type': 'integer'}},
        ('type', 'value', 'periodSeconds'))},
    'selectPolicy': _STRING, 'stabilizationWindowSeconds': {'type': 'integer'},
    'tolerance': _QUANTITY})
KSERVE_AUTOSCALING_SCHEMA = _object({
    'metrics': {'type': 'array', 'items': _object({
        'type': {'enum': ['Resource', 'External', 'PodMetric']},
        'resource': _object({'name': {'enum': ['cpu', 'memory']}, 'target': _TARGET},
                            ('name', 'target')),
        'external': _object({
            'metric': _object({'backend': {'enum': ['prometheus', 'graphite']},
                               'serverAddress': _STRING, 'query': _STRING,
                               'namespace': _STRING}),
            'authenticationRef': _object({
                'authenticationRef': _object({'name': _STRING}, ('name',)),
                'authModes': _STRING}, ('authenticationRef',)),
            'target': _TARGET}, ('metric', 'target')),
        'podmetric': _object({
            'metric': _object({'backend': {'enum': ['opentelemetry']},
                               'serverAddress': _STRING,
                               'metricNames': {'type': 'array', 'items': _STRING},
                               'query': _STRING, 'operationOverTime': _STRING}),
            'target': _TARGET}, ('metric', 'target')),
    }, ('type',))},
    'behavior': _object({'scaleUp': _SCALING_RULES, 'scaleDown': _SCALING_RULES}),
})


def test_the_kserve_autoscaling_section_matches_kserves_schema_and_keda_rules() -> None:
    """Field names and types as KServe's CRD has them, and what its KEDA validation demands.

    KServe's webhook (validateScalingKedaCompExtension) refuses scaleMetric with KEDA, an
    External metric without a query or a target value, and a CPU target that is not a
    Utilization of 1 to 100 %.
    """
    isvc = _load('inferenceservice.yaml')
    notes = isvc['metadata']['annotations']
    # KEDA needs Standard mode (RawDeployment before KServe 0.16, still read as Standard).
    assert notes['serving.kserve.io/deploymentMode'] == 'Standard'
    assert notes['serving.kserve.io/autoscalerClass'] == 'keda'
    predictor = isvc['spec']['predictor']
    assert not {'scaleMetric', 'scaleTarget', 'scaleMetricType'} & predictor.keys()
    text = (DEPLOY / 'kubernetes' / 'inferenceservice.yaml').read_text()
    assert not re.search(r'^\s*scaleMetric:', text, re.MULTILINE)
    autoscaling = predictor['autoScaling']
    jsonschema.validate(autoscaling, KSERVE_AUTOSCALING_SCHEMA)
    for bad in ({'metrics': [{'type': 'External', 'external': {
            'metric': {'backend': 'prometheus', 'query': 'up'},
            'target': {'type': 'Value', 'value': 0.7}}}]},  # a float, not a quantity
            {'metrics': [{'type': 'Pods'}]}, {'metric': []}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, KSERVE_AUTOSCALING_SCHEMA)
    for metric in autoscaling['metrics']:
        assert set(metric) == {'type', metric['type'].lower()}
        if metric['type'] == 'External':
            assert metric['external']['metric']['query']
            assert metric['external']['target']['type'] == 'Value'
            assert float(metric['external']['target']['value']) > 0
        elif metric['type'] == 'Resource' and metric['resource']['name'] == 'cpu':
            assert metric['resource']['target']['type'] == 'Utilization'
            assert 1 <= metric['resource']['target']['averageUtilization'] <= 100


_SELECTOR = re.compile(r'(adaptive_offload_\w+)\{([^}]*)\}')


def test_the_kserve_service_scales_through_keda_on_the_hpas_metrics_and_targets() -> None:
    """Each KEDA trigger is an HPA metric of hpa.yaml, summed over the predictor's pods.

    KServe makes each External metric a KEDA prometheus trigger whose threshold is its value,
    at KEDA's default metric type AverageValue: pods = ceil(query / value). A query summing a
    per-pod value over the pods, against the HPA's per-pod target, asks for what the HPA asks.
    """
    isvc = _load('inferenceservice.yaml')
    metrics = isvc['spec']['predictor']['autoScaling']['metrics']
    hpa = _load('hpa.yaml')['spec']
    hpa_targets = {m['pods']['metric']['name']: _quantity(m['pods']['target']['averageValue'])
                   for m in hpa['metrics'] if m['type'] == 'Pods'}
    rules = yaml.safe_load(_load('prometheus-adapter-rules.yaml')['data']['config.yaml'])['rules']
    rule_series = {r['name']['as']: set(re.findall(r'(adaptive_offload_\w+)\{', r['metricsQuery']))
                   for r in rules}
    externals = [m['external'] for m in metrics if m['type'] == 'External']
    exported = _exported_metric_names()
    sim = HpaSettings()
    window = f'[{sim.metric_window_s / 60:g}m]'
    pods = f'pod=~"{isvc["metadata"]["name"]}-predictor-.+"'  # KServe's <name>-predictor
    by_series = {}
    for external in externals:
        assert external['metric']['backend'] == 'prometheus'
        assert external['metric']['serverAddress'].startswith(('http://', 'https://'))
        query = external['metric']['query']
        selectors = _SELECTOR.findall(query)
        series = frozenset(name for name, _ in selectors)
        assert selectors and series <= exported, (series, exported)
        assert all(pods in labels for _, labels in selectors), query
        assert query.startswith('sum(')  # over the pods: KEDA divides by the value
        # Each selector's series taken once per pod, even where Prometheus scrapes a pod twice.
        assert query.count('max by (namespace, pod') == len(selectors), query
        assert all(w == window for w in re.findall(r'\[\w+\]', query)), query
        by_series[series] = float(external['target']['value'])
    # The same series and per-pod targets as the HPA's metrics, in the HPA's order.
    assert len(by_series) == len(externals)
    assert list(by_series) == [frozenset(rule_series[name]) for name in hpa_targets]
    for name, target in hpa_targets.items():
        assert by_series[frozenset(rule_series[name])] == pytest.approx(target), name
    primary = externals[0]
    assert metrics[0]['type'] == 'External'
    assert float(primary['target']['value']) == pytest.approx(sim.target_offered_utilisation)
    numerator, denominator = re.split(r'\s/\s', primary['metric']['query'])
    assert re.search(r'rate\(adaptive_offload_offered_total\{[^}]*\}' + re.escape(window),
                     numerator)
    assert 'adaptive_offload_capacity_images_per_second{' in denominator
    assert 'rate(' not in denominator
    # CPU last, at the HPA's target; the HPA's stabilisation windows.
    [hpa_cpu] = [m['resource'] for m in hpa['metrics'] if m['type'] == 'Resource']
    assert metrics[-1] == {'type': 'Resource', 'resource': hpa_cpu}
    behavior = isvc['spec']['predictor']['autoScaling']['behavior']
    for way in ('scaleUp', 'scaleDown'):
        assert behavior[way]['stabilizationWindowSeconds'] == \
            hpa['behavior'][way]['stabilizationWindowSeconds']


def test_prometheus_scrapes_the_kserve_pods_metrics_port() -> None:
    """The predictor's pods carry the scrape annotations, at serve's metrics port.

    KServe's enable-prometheus-scraping would point prometheus.io/port at a Knative queue
    proxy's port (9091), which Standard mode does not run.
    """
    isvc = _load('inferenceservice.yaml')
    assert isvc['metadata']['annotations'].get(
        'serving.kserve.io/enable-prometheus-scraping') != 'true'
    predictor = isvc['spec']['predictor']
    notes = predictor['annotations']
    [container] = predictor['containers']
    args = build_parser().parse_args(['serve', *container['args']])
    assert notes['prometheus.io/scrape'] == 'true'
    assert int(notes['prometheus.io/port']) == args.metrics_port
    assert notes['prometheus.io/path'] == '/metrics'


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

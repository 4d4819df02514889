"""Latency quantiles, bandwidth, trend forecasts, accuracy priors and agreement, availability."""

from __future__ import annotations

from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import ConfigError
import numpy as np
from offload_manager.accuracy import AccuracyModel, agreement_f1, prior
from offload_manager.availability import AvailabilityPredictor
from offload_manager.latency_models import (ArForecaster, LatencyBook, SlidingQuantiles,
                                            tail_probability)
import pytest


def test_quantiles_match_numpy_and_follow_the_window() -> None:
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 20.0, 500)
    q = SlidingQuantiles(window=100)
    for v in values:
        q.add(float(v))
    window = values[-100:]
    for p in (0.5, 0.95, 0.99):
        assert q.quantile(p) == pytest.approx(np.quantile(window, p))
    assert q.exceedance(float(np.median(window))) == pytest.approx(0.5, abs=0.01)
    for _ in range(100):  # a regime change: the old samples leave the window entirely
        q.add(1000.0)
    assert q.quantile(0.01) == 1000.0
    q.add(float('nan'))
    assert len(q) == 100
    with pytest.raises(ConfigError):
        SlidingQuantiles(0)


def test_old_samples_expire_but_the_newest_are_kept() -> None:
    q = SlidingQuantiles(window=200, max_age_s=30.0, min_keep=3)
    for t in range(10):
        q.add(500.0, t_s=float(t))  # a spike, 0-9 s
    q.add(50.0, t_s=35.0)
    q.expire(35.0)  # 0-4 s are older than 30 s; 5-9 s and 35 s stay
    assert len(q) == 6
    q.expire(100.0)  # all are old now: the newest three still count
    assert len(q) == 3 and q.values() == [50.0, 500.0, 500.0]
    fixed = SlidingQuantiles(window=5)  # no max age: only the count bounds it
    for t in range(5):
        fixed.add(1.0, t_s=float(t))
    fixed.expire(1e6)
    assert len(fixed) == 5
    with pytest.raises(ConfigError):
        SlidingQuantiles(max_age_s=0.0)


def test_the_newest_samples_come_in_order_with_the_time_they_span() -> None:
    window = SlidingQuantiles(window=4)
    assert window.newest(3) == [] and window.span_s(2) == 0.0
    for t, value in enumerate([5.0, 1.0, 4.0, 2.0, 3.0]):
        window.add(value, t * 0.5)
    assert window.newest(3) == [4.0, 2.0, 3.0] and window.newest(9) == [1.0, 4.0, 2.0, 3.0]
    assert window.span_s(3) == 1.0 and window.span_s(5) == 0.0


def test_a_run_beyond_the_older_samples_is_a_regime_change() -> None:
    q = SlidingQuantiles(window=200, shift_run=5)
    rng = np.random.default_rng(1)
    for v in rng.normal(50.0, 2.0, 100):  # contention: about 50 ms
        q.add(float(v))
    for i, v in enumerate(rng.normal(25.0, 1.0, 5)):  # it ended: about 25 ms
        q.add(float(v))
        assert len(q) == (101 + i if i < 4 else 5)  # forgotten on the fifth fast sample
    assert q.quantile(0.99) < 30.0
    up = SlidingQuantiles(window=200, shift_run=5)
    for v in rng.normal(50.0, 2.0, 100):
        up.add(float(v))
    for v in (80.0, 80.0, 80.0, 80.0, 50.0):  # four slow ones among five: no change
        up.add(v)
    assert len(up) == 105
    for _ in range(5):  # five in a row: a latency spike began
        up.add(90.0)
    assert len(up) == 5 and up.quantile(0.0) == 90.0


def test_steady_noise_and_ties_do_not_look_like_a_regime_change() -> None:
    rng = np.random.default_rng(2)
    q = SlidingQuantiles(window=200, shift_run=5)
    lengths = []
    for v in rng.lognormal(np.log(25.0), 0.1, 20_000):
        q.add(float(v))
        lengths.append(len(q))
    assert min(lengths[200:]) == 200  # never reset in 20,000 steady samples
    flat = SlidingQuantiles(window=50, shift_run=5)
    for _ in range(60):
        flat.add(40.0)
    assert len(flat) == 50


def test_tail_probability_is_empirical_when_measured_and_cautious_before() -> None:
    q = SlidingQuantiles()
    assert tail_probability(q, 250.0) is None
    assert tail_probability(None, 250.0, prior_ms=25.0) < 1e-4  # ten times inside: trusted
    assert tail_probability(None, 250.0, prior_ms=200.0) > 0.3  # near the deadline: not
    for v in (95.0, 100.0, 105.0):
        q.add(v)
    few = tail_probability(q, 250.0)
    assert 0.0 < few < 0.01  # three samples agree: likely, not certain
    for v in [100.0] * 17 + [300.0] * 5:
        q.add(v)
    assert tail_probability(q, 250.0) == pytest.approx(5 / 25)  # enough: the share itself


def test_latency_book_keys_series_separately() -> None:
    book = LatencyBook(window=10)
    book.add('edge:yolov8n@320', 30.0)
    book.add('cloud', 120.0)
    assert book.quantile('edge:yolov8n@320', 0.5) == 30.0
    assert book.quantile('cloud', 0.5) == 120.0 and book.quantile('nothing', 0.5) is None


def test_ar_forecaster_extrapolates_a_trend_and_persists_a_flat_series() -> None:
    flat = ArForecaster(order=2, window=30)
    for _ in range(30):
        flat.add(50.0)
    assert flat.forecast(5) == 50.0
    rising = ArForecaster(order=2, window=30)
    for t in range(30):
        rising.add(50.0 + 5.0 * t)  # +5 ms per request
    last = 50.0 + 5.0 * 29
    assert rising.forecast(5) == pytest.approx(last + 25.0, rel=0.05)
    assert ArForecaster().forecast() is None
    with pytest.raises(ConfigError):
        ArForecaster(order=3, window=5)


def _det(x: float, name: str = 'person') -> Detection:
    return Detection(x1=x, y1=0.0, x2=x + 10.0, y2=10.0, score=0.9, class_name=name)


def test_priors_are_the_published_figures() -> None:
    assert prior('yolov8n') == 37.3 and prior('yolov8n', 640) == 37.3
    assert prior('yolov8n-onnx', 640) == 37.3  # backend suffixes keep the family's prior
    assert prior('yolov8n', 320) < prior('yolov8n', 640)
    assert prior('fasterrcnn_resnet50_fpn_v2') == 46.7
    assert prior('fasterrcnn_mobilenet_v3_large_320_fpn') == 22.8


def test_agreement_f1_matches_by_iou_and_class() -> None:
    assert agreement_f1([], []) == 1.0
    assert agreement_f1([_det(0)], [_det(0)]) == 1.0
    assert agreement_f1([_det(0)], [_det(0, 'car')]) == 0.0
    assert agreement_f1([_det(0), _det(100)], [_det(1)]) == pytest.approx(2 / 3)
    assert agreement_f1([_det(0)], [_det(8)]) == 0.0  # IoU 2/18 < 0.5


def test_accuracy_moves_from_prior_to_agreement() -> None:
    model = AccuracyModel('fasterrcnn_resnet50_fpn_v2', prior_weight=10)
    assert model.edge('yolov8n', 640) == 37.3
    for _ in range(200):  # the edge finds half of what the cloud finds
        model.observe('yolov8n', 640, [_det(0)], [_det(0), _det(100), _det(200)])
    assert model.edge('yolov8n', 640) == pytest.approx(0.5 * 46.7, abs=1.0)
    assert model.edge('yolov8n', 320) == prior('yolov8n', 320)  # other sizes keep their prior


def test_availability_learns_that_failures_cluster() -> None:
    pred = AvailabilityPredictor(horizon_s=2.0, min_samples=20, refit_every=10)
    t = 0.0
    for cycle in range(12):  # 10 s up, 5 s down, repeatedly, 10 requests per second
        for i in range(150):
            pred.observe(t, ok=i < 100)
            t += 0.1
    assert pred.fitted
    up_t = t
    for _ in range(50):
        pred.observe(up_t, True)
        up_t += 0.1
    healthy = pred.predict(up_t)
    down_t = up_t
    for _ in range(10):
        pred.observe(down_t, False)
        down_t += 0.1
    failing = pred.predict(down_t)
    assert healthy > 0.8 and failing < 0.5
    pred.health(True)
    assert pred.predict(up_t) <= healthy


def test_the_rbf_surface_is_what_scikit_learn_predicts() -> None:
    from sklearn.svm import SVR

    from offload_manager.availability import _scale_gamma, RbfSurface

    rng = np.random.default_rng(3)
    x = rng.random((120, 6))
    y = np.clip(1.0 - x[:, 0] ** 2 + 0.05 * rng.standard_normal(120), 0.0, 1.0)
    fitted = SVR(kernel='rbf', C=1.0, epsilon=0.05, gamma='scale').fit(x, y)
    gamma = _scale_gamma(x)
    surface = RbfSurface(fitted.support_vectors_, fitted.dual_coef_[0],
                         float(fitted.intercept_[0]), gamma)
    assert gamma == pytest.approx(fitted._gamma)
    for point in rng.random((20, 6)):
        assert surface(point) == pytest.approx(fitted.predict(point.reshape(1, -1))[0],
                                               abs=1e-9)


def test_availability_without_enough_samples_is_the_recent_share() -> None:
    pred = AvailabilityPredictor(min_samples=1000)
    for i in range(10):
        pred.observe(i * 0.1, ok=i % 2 == 0)
    assert not pred.fitted
    assert pred.predict(1.0) == pytest.approx(0.5)
    for i in range(10):
        pred.observe(1.0 + i * 0.1, ok=False)
    assert pred.predict(2.0) == pytest.approx(1 / 12)  # ten failures in a row: nearly down


def test_keep_newest_forgets_all_but_the_newest_samples() -> None:
    series = SlidingQuantiles(window=50)
    for i in range(10):
        series.add(float(i), t_s=i)
    series.keep_newest(3)
    assert series.values() == [7.0, 8.0, 9.0] and series.mean() == pytest.approx(8.0)
    book = LatencyBook()
    book.keep_newest('cloud', 3)  # never measured: nothing to do
    for v in (50.0, 50.0, 50.0, 90.0):
        book.add('cloud', v)
    book.keep_newest('cloud', 1)
    assert book.quantile('cloud', 0.5) == 90.0
    ar = ArForecaster()
    for v in range(20):
        ar.add(float(v))
    assert ar.forecast() == pytest.approx(20.0)  # the trend
    ar.keep_newest(3)
    assert ar.forecast() == 19.0  # too few values to fit: the last one

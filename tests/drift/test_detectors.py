import json

import numpy as np
import pytest
from river import drift

from prodlens.drift.detectors import ChangePoint, DetectorBank, DetectorConfig, PageHinkley, SeriesDetector


def detections(det, xs):
    out = []
    for i, x in enumerate(xs):
        det.update(float(x))
        if det.drift_detected:
            out.append(i)
    return out


@pytest.mark.parametrize("params", [
    {},  # river's defaults
    {"min_instances": 5, "delta": 0.5, "threshold": 8.0, "alpha": 1.0},
    {"min_instances": 10, "delta": 0.05, "threshold": 5.0, "alpha": 0.99, "mode": "up"},
    {"min_instances": 3, "delta": 0.1, "threshold": 4.0, "alpha": 0.999, "mode": "down"},
])
def test_page_hinkley_matches_river(params):
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.normal(0, 1, 300), rng.normal(3, 1, 200), rng.normal(-2, 2, 300),
                         np.linspace(0, 10, 200) + rng.normal(0, 1, 200)])
    ours, theirs = PageHinkley(**params), drift.PageHinkley(**params)
    got, want = [], []
    for i, x in enumerate(xs):
        ours.update(float(x))
        theirs.update(float(x))
        if ours.drift_detected:
            got.append(i)
        if theirs.drift_detected:
            want.append(i)
        assert ours.sum_increase == theirs._sum_increase and ours.sum_decrease == theirs._sum_decrease
    assert got == want and len(want) > 0


def test_page_hinkley_state_roundtrip_continues_identically():
    rng = np.random.default_rng(1)
    xs = np.concatenate([rng.normal(0, 1, 100), rng.normal(4, 1, 100)])
    a = PageHinkley(5, 0.5, 8.0, 1.0)
    detections(a, xs[:120])
    b = PageHinkley.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b.to_dict() == a.to_dict()
    assert detections(a, xs[120:]) == detections(b, xs[120:])
    with pytest.raises(ValueError, match="mode"):
        PageHinkley(mode="sideways")


def first_change(det, xs, start=0):
    for i, x in enumerate(xs):
        points = det.update(float(x), window=i)
        if points:
            return i, points[0]
    return None, None


def test_sudden_jump_is_found_within_two_windows():
    # documented: with the defaults a 6 sd jump is found by its second window 99% of the time
    delays = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        xs = np.concatenate([rng.normal(0.02, 0.003, 100), rng.normal(0.02 + 6 * 0.003, 0.003, 10)])
        i, point = first_change(SeriesDetector("error_rate"), xs)
        if i is not None and i < 100:
            continue  # a false alarm before the jump (counted in the stationary test)
        assert i is not None
        delays.append(i - 100)
        assert point.direction == "up" and point.series == "error_rate" and point.window == i
        assert point.magnitude == pytest.approx(6 * 0.003, rel=0.5)
        assert point.score > 3  # in units of the (estimated) series sd
    assert len(delays) >= 36 and max(delays) <= 1, delays


def test_drop_is_reported_down():
    rng = np.random.default_rng(3)
    xs = np.concatenate([rng.normal(1000, 30, 60), rng.normal(700, 30, 10)])
    i, point = first_change(SeriesDetector("traffic"), xs)
    assert i in (60, 61) and point.direction == "down" and point.magnitude < -200


def test_slow_linear_decay_is_found():
    found = []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        # score mean decays by 0.03 sd per window after window 80
        xs = np.concatenate([rng.normal(0.6, 0.01, 80), 0.6 - 0.0003 * np.arange(1, 151) + rng.normal(0, 0.01, 150)])
        i, point = first_change(SeriesDetector("score_mean"), xs)
        assert i is not None and i >= 80, i
        assert point.direction == "down"
        found.append(i - 80)
    assert max(found) <= 100 and np.median(found) <= 60


def test_stationary_noise_false_alarm_rate():
    # documented: ~3% of 200-window stationary series raise an alarm with the defaults
    series_with_alarm = 0
    for seed in range(100):
        rng = np.random.default_rng(1000 + seed)
        det = SeriesDetector("s")
        xs = rng.normal(5.0, 2.0, 230)  # 30 warm-up + 200 windows
        series_with_alarm += any(det.update(float(x), i) for i, x in enumerate(xs))
    assert series_with_alarm <= 5


def test_adwin_alone_and_gradual_change():
    cfg = DetectorConfig(methods=("adwin",))
    rng = np.random.default_rng(4)
    xs = np.concatenate([rng.normal(0, 1, 100), rng.normal(3, 1, 30)])
    i, point = first_change(SeriesDetector("x", cfg), xs)
    assert 100 <= i <= 108 and point.detectors == ("adwin",) and point.direction == "up"
    quiet = SeriesDetector("x", cfg)
    assert not any(quiet.update(float(x), i) for i, x in enumerate(rng.normal(0, 1, 230)))


def test_fixed_reference_scale_and_per_value_scale():
    det = SeriesDetector("feature_mean", center=10.0, scale=1.0)
    assert not det.warming_up
    rng = np.random.default_rng(5)
    points = []
    for i, x in enumerate(np.concatenate([rng.normal(10, 1, 20), rng.normal(20, 1, 5)])):
        points += det.update(float(x), i)
    assert points and points[0].window in (20, 21)
    # a per-window scale (reference std / sqrt(n)) makes the same move look small
    det2 = SeriesDetector("feature_mean", center=10.0, scale=1.0)
    assert not any(det2.update(v, i, scale=100.0) for i, v in enumerate([10.0] * 20 + [20.0] * 5))
    assert det2.update(float("nan"), 99) == [] and det2.n == 25
    with pytest.raises(ValueError, match="scale"):
        SeriesDetector("x", scale=0.0)


def test_detector_state_roundtrip_continues_identically():
    rng = np.random.default_rng(6)
    xs = np.concatenate([rng.normal(0, 1, 80), rng.normal(6, 1, 20), rng.normal(6, 1, 60) + np.arange(60) * 0.2])
    a = SeriesDetector("s")
    for i, x in enumerate(xs[:90]):
        a.update(float(x), i)
    state = json.loads(json.dumps(a.to_dict()))
    b = SeriesDetector.from_dict(state)
    assert b.to_dict() == a.to_dict()
    pa = [p for i, x in enumerate(xs[90:], 90) for p in a.update(float(x), i)]
    pb = [p for i, x in enumerate(xs[90:], 90) for p in b.update(float(x), i)]
    assert pa == pb and pa


def test_bank_per_series_and_config():
    bank = DetectorBank(DetectorConfig(warmup=10), {"traffic": DetectorConfig(warmup=5, ph_threshold=6.0)})
    rng = np.random.default_rng(7)
    points = []
    for t in range(60):
        jump = 50.0 if t >= 40 else 0.0
        points += bank.update(t, {"churn/v7/error_rate": 0.02 + rng.normal(0, 0.002),
                                  "traffic/churn/v7": 1000 + rng.normal(0, 20) - 10 * jump})
    assert bank.detectors["traffic/churn/v7"].config.warmup == 5
    assert bank.detectors["churn/v7/error_rate"].config.warmup == 10
    assert [p.series for p in points] == ["traffic/churn/v7"] and points[0].window in (40, 41)
    assert isinstance(points[0], ChangePoint) and points[0].to_dict()["direction"] == "down"
    back = DetectorBank.from_dict(json.loads(json.dumps(bank.to_dict())))
    assert back.to_dict() == bank.to_dict()
    with pytest.raises(ValueError, match="methods: unknown detector"):
        DetectorConfig(methods=("cusum",))
    with pytest.raises(ValueError, match=r"detectors: unknown key\(s\) \['speed'\]"):
        DetectorConfig.from_dict({"speed": 1})


def test_window_series_feed_the_bank():
    from prodlens.drift.detectors import window_series
    from prodlens.sketches.summary import WindowSummary

    rng = np.random.default_rng(8)
    bank = DetectorBank(DetectorConfig(warmup=10))
    points = []
    for t in range(40):
        w = WindowSummary("churn", "v7", 60 * t, 60 * (t + 1))
        x = rng.normal(5 + (4 if t >= 25 else 0), 1, 400)
        w.update_columns({"features": {"x": x, "plan": ["a"] * 400}}, ["country=US"] * 400)
        series = window_series(w)
        assert set(series) == {"churn/v7/country=US/traffic", "churn/v7/country=US/features.x/mean"}
        points += bank.update(t, series)
    assert [(p.series, p.window) for p in points][:1] == [("churn/v7/country=US/features.x/mean", 25)]

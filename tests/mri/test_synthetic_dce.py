"""The synthetic DCE generator: shape, determinism, kinetics that match the label of the curve."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from export.synthetic.dce import CURVE_TYPES, classify_curve, make_case


def test_case_shape_and_types() -> None:
    case = make_case(np.random.default_rng(0), positive=True)
    assert case.volume.shape == (5, 16, 64, 64) and case.volume.dtype == np.float32
    assert case.volume.min() >= 0 and case.label == 1 and case.curve in CURVE_TYPES
    assert set(case.clinical) == {"age", "er", "her2", "ki67", "grade"}
    assert case.lesion_mask.any() and not (case.lesion_mask & ~case.breast_mask).any()


def test_same_seed_same_case() -> None:
    a, b = (make_case(np.random.default_rng(9), positive=False) for _ in range(2))
    assert np.array_equal(a.volume, b.volume) and a.clinical == b.clinical and a.curve == b.curve


def test_lesion_curve_matches_its_type_and_label_correlation() -> None:
    cases = [make_case(np.random.default_rng(100 + i), positive=i % 2 == 0) for i in range(40)]
    for case in cases:
        curve = case.volume[:, case.lesion_mask].mean(axis=1)
        assert classify_curve(curve / curve[0] - 1) == case.curve
    counts = Counter((c.label, c.curve) for c in cases)
    assert counts[(1, "washout")] > counts[(1, "persistent")]
    assert counts[(0, "persistent")] > counts[(0, "washout")]
    missing = sum(v is None for c in cases for v in c.clinical.values())
    assert 0 < missing < 0.3 * 5 * len(cases)


@pytest.mark.parametrize(("enhancement", "curve"), [
    ((0, 0.8, 1.0, 1.2, 1.4), "persistent"),
    ((0, 1.0, 1.0, 1.0, 1.05), "plateau"),
    ((0, 1.5, 1.4, 1.1, 0.9), "washout"),
])
def test_classify_curve(enhancement: tuple[float, ...], curve: str) -> None:
    assert classify_curve(enhancement) == curve


def test_generator_labels_curves_by_the_appliances_rule() -> None:
    """export may not import appliance (nor the reverse): the rule stands in both, and must agree."""
    from appliance.mri._kinetics import classify

    rng = np.random.default_rng(5)
    curves = np.concatenate([np.zeros((500, 1)), rng.uniform(0.0, 2.0, (500, 4))], axis=1)
    curves[:20, -1] = curves[:20, 1:3].max(axis=1) * 1.1 + 0.1  # exactly at the +10 % threshold
    assert [classify_curve(c) for c in curves] == [classify(c) for c in curves]


def test_another_protocol_samples_the_same_lesion_and_record() -> None:
    """The same seed at other phase times: same lesion kinetics type and clinical record, more phases."""
    from export.synthetic.dce import PHASE_TIMES_S, enhancement_at

    nominal = make_case(np.random.default_rng(5), positive=True)
    other = make_case(np.random.default_rng(5), positive=True, phase_times_s=(0.0, 75.0, 120.0, 165.0, 210.0, 255.0))
    assert other.volume.shape[0] == 6 and other.phase_times_s[1] == 75.0
    assert (other.curve, other.clinical, other.enhancement) == (nominal.curve, nominal.clinical, nominal.enhancement)
    np.testing.assert_array_equal(other.volume[0], nominal.volume[0])  # the pre phase: same anatomy, same noise
    e = np.asarray(nominal.enhancement)
    np.testing.assert_allclose(enhancement_at(e, np.asarray(PHASE_TIMES_S)), e)
    with pytest.raises(ValueError, match=r"phase_times_s \[0.0, 30.0\] must start with 0"):
        make_case(np.random.default_rng(5), positive=True, phase_times_s=(0.0, 30.0))

"""How well the breast_mri engine separates washout from persistent lesions on held-out synthetic studies.

Held-out studies come from seeds the demo training never used
(``np.random.default_rng([7777, i])``); each is written as real MR DICOM
(cycling through the three encodings) and goes through the appliance's own
pipeline (assembly, preprocessing, clinical vector, engine, kinetics). Reported:

- AUC of the engine's probability, washout (positive) vs persistent (negative) lesions;
- AUC of the engine's probability for the node-metastasis label, all studies;
- the baseline in the same run: AUC of a rule without a model, the lesion's
  late signal change measured by the pipeline's kinetic analysis;
- agreement of the pipeline's kinetic curve type with the generator's truth;
- the same held-out studies acquired with other protocols (3, 4, 6 and 8
  dynamic phases at other times; the generator samples each lesion's kinetics
  at those times): the appliance maps their phases onto the model card's phase
  times (nearest or linear interpolation), so the AUC per phase count is printed
  beside the native one; a protocol that does not cover the model's time window
  is refused and counted as such.

Each study's known clinical values (ER, HER2, Ki-67, grade) are entered as a
sidecar record keyed by its Accession Number, as a site would with
``appliance clinical set``; age comes from Patient's Age in the DICOM.

Usage::

    .venv/bin/python bench/breast_mri_auc.py [--quick] [--studies N] [--data-dir DIR] [--precision fp32]
                                             [--protocol-studies N]

The engine is the demo engine installed under ``DIR`` (made with
``export.demo.install_demo`` on first use, reused afterwards). ``--quick``
trains the tiny quick-test model when none is installed and runs 24 studies.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.errors import StudyIncomplete  # noqa: E402
from appliance.mri import run_breast_mri, set_clinical  # noqa: E402
from appliance.mri._kinetics import lesion_kinetics  # noqa: E402
from appliance.mri.pipeline import prepare_inputs  # noqa: E402
from appliance.state import StateStore  # noqa: E402
from export.synthetic.dce import PHASE_TIMES_S, make_case  # noqa: E402
from export.synthetic.dce_dicom import ENCODINGS, encode_case, study_identity  # noqa: E402


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half; NaN when a class is empty."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


#: other protocols' phase starts (seconds after the pre phase; contrast at 60 s), by dynamic phase count
PROTOCOLS: dict[int, tuple[float, ...]] = {
    3: (0.0, 90.0, 180.0),
    4: (0.0, 100.0, 220.0, 340.0),
    5: PHASE_TIMES_S,
    6: (0.0, 90.0, 155.0, 220.0, 285.0, 350.0),
    8: (0.0, 75.0, 120.0, 165.0, 210.0, 255.0, 300.0, 345.0),
}


def protocol_auc(engine: object, store: StateStore, count: int, studies: int) -> str:
    """One line: the engine's AUCs on held-out studies acquired at ``PROTOCOLS[count]`` (refusals counted)."""
    probs, labels, curves, refused, reason = [], [], [], 0, ""
    for i in range(studies):
        case = make_case(np.random.default_rng([7777, i]), positive=bool(i % 2), phase_times_s=PROTOCOLS[count])
        datasets = encode_case(case, ENCODINGS[i % 3], study_identity(50_000 + i))
        known = {k: v for k, v in case.clinical.items() if v is not None and k != "age"}
        if known:
            set_clinical(store, str(datasets[0].AccessionNumber), known, actor="bench")
        try:
            result = run_breast_mri(f"bench-{count}-{i}", datasets[0].StudyInstanceUID, datasets, engine, store)  # type: ignore[arg-type]
        except StudyIncomplete as exc:
            refused, reason = refused + 1, str(exc)
            continue
        probs.append(result.findings[0].probability)
        labels.append(case.label)
        curves.append(case.curve)
    times = ", ".join(f"{t - 60:.0f}" for t in PROTOCOLS[count][1:])
    head = f"{count} phases (post-contrast at {times} s after injection){' [native]' if count == 5 else ''}:"
    if not probs:
        return f"{head} refused {refused}/{studies}: {reason[:160]}"
    p, y, c = np.asarray(probs), np.asarray(labels, bool), np.asarray(curves)
    wp = np.isin(c, ("washout", "persistent"))
    return (f"{head} scored {len(probs)}/{studies}, AUC washout vs persistent {auc(p[wp], c[wp] == 'washout'):.3f}, "
            f"AUC node label {auc(p, y):.3f}" + (f", refused {refused}" if refused else ""))


def _engine(data_dir: Path, precision: str, quick: bool) -> object:
    from engines.registry import Registry
    from export.demo import QUICK_GATE, install_demo
    from export.train import QUICK_SIZES, DemoSizes

    trusted = data_dir / "trusted_keys"
    registry = Registry(data_dir / "engines", trusted)
    if registry.active_version("breast_mri") is None:
        sizes = QUICK_SIZES if quick else DemoSizes()
        kwargs = {"gate": QUICK_GATE} if quick else {}
        install_demo(data_dir, trusted, precision=precision, sizes=sizes, **kwargs)  # type: ignore[arg-type]
    return registry.load_active("breast_mri")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="24 studies; tiny model if none is installed")
    parser.add_argument("--studies", type=int, default=0, help="held-out studies (default 160, quick 24)")
    parser.add_argument("--data-dir", type=Path, default=None, help="appliance data dir holding the demo engine")
    parser.add_argument("--precision", default="fp32", help="which demo precision to activate when installing")
    parser.add_argument("--protocol-studies", type=int, default=0,
                        help="held-out studies per other protocol (default: as many as --studies, quick 24)")
    args = parser.parse_args()
    count = args.studies or (24 if args.quick else 160)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="mri-auc-"))
    engine = _engine(data_dir, args.precision, args.quick)
    card = engine.manifest.card  # type: ignore[attr-defined]
    store = StateStore(Path(tempfile.mkdtemp(prefix="mri-auc-state-")) / "state.db")

    probs, labels, curves, rule, agree = [], [], [], [], 0
    started = time.perf_counter()
    for i in range(count):
        rng = np.random.default_rng([7777, i])
        case = make_case(rng, positive=bool(i % 2))
        datasets = encode_case(case, ENCODINGS[i % 3], study_identity(50_000 + i))
        known = {k: v for k, v in case.clinical.items() if v is not None and k != "age"}  # age is in the DICOM
        if known:  # what a site enters with `appliance clinical set ACCESSION ...`
            set_clinical(store, str(datasets[0].AccessionNumber), known, actor="bench")
        result = run_breast_mri(f"bench-{i}", datasets[0].StudyInstanceUID, datasets, engine, store)  # type: ignore[arg-type]
        finding = result.findings[0]
        prepared = prepare_inputs(datasets, card).prepared
        kinetics = lesion_kinetics(prepared.dce, prepared.mask)
        late_drop = 0.0 if kinetics is None else -(kinetics.enhancement[-1] - max(kinetics.enhancement[1:3])) / (
            1 + max(kinetics.enhancement[1:3]))
        probs.append(finding.probability)
        labels.append(case.label)
        curves.append(case.curve)
        rule.append(late_drop)
        agree += finding.kinetic_curve == case.curve
    seconds = time.perf_counter() - started
    p, y, c, r = np.asarray(probs), np.asarray(labels, bool), np.asarray(curves), np.asarray(rule)
    wp = np.isin(c, ("washout", "persistent"))
    washout = c[wp] == "washout"
    manifest = engine.manifest  # type: ignore[attr-defined]
    print(f"engine: {manifest.task} {manifest.version} ({manifest.precision}); {count} held-out studies, "
          f"{int(wp.sum())} washout/persistent ({int(washout.sum())} washout)")
    print(f"AUC washout vs persistent, engine probability: {auc(p[wp], washout):.3f}")
    print(f"AUC washout vs persistent, baseline rule (late signal drop): {auc(r[wp], washout):.3f}")
    print(f"AUC node-metastasis label, engine probability: {auc(p, y):.3f}")
    print(f"kinetic curve type agreement with the generator: {agree}/{count}")
    print(f"pipeline time: {seconds / count * 1000:.0f} ms per study (encode + assemble + infer, 2 CPU cores shared)")
    per_protocol = args.protocol_studies or count
    print(f"AUC per phase count (the same held-out lesions acquired with other protocols, {per_protocol} studies each; "
          "phases mapped onto the card's phase times):")
    for phases in sorted(PROTOCOLS):
        print("  " + protocol_auc(engine, store, phases, per_protocol))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

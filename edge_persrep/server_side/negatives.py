"""Which negatives the model trains against and which only calibrate `present`.

Enrolment sets an object's threshold between the scores of its references and the scores of
negatives. Scored by a model that was just trained to push those very photos away, negatives score
unrealistically low, and the threshold ends too low for look-alikes the model never met (measured
on dog, identity-disjoint benchmark: trained-against negatives peaked at 0.19, unseen dogs reached
0.63, the threshold fell from 0.475 to 0.329). So whole identities are held out of training and
only calibrate: the threshold is then set on look-alikes as new to the model as the ones it meets.

That is `personalize --calibrate-on held-out`. It is not the default (`training`) because on the
identity-disjoint benchmark (4 targets, one seed) the negatives it takes from training cost more
ranking quality than the better threshold won back; see the README ("Recognition in clutter").

An identity is the part of a negative's file name before its last "_" (`dog2_00.jpg`,
`dog2_01.jpg` -> `dog2`; a photo without "_" is its own), or the name of an object enrolled in
`--others`. Identities are ranked by how close the pretrained backbone finds them to the reference
photos, and every HOLDOUT_EVERY-th from the second hardest on is held out, so training keeps the
hardest one and both sides get easy and hard look-alikes. With fewer than MIN_UNITS identities,
single photos are held out the same way; with fewer than MIN_UNITS photos, none is (and the run
records that it calibrated on training negatives).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

HOLDOUT_EVERY = 3
MIN_UNITS = 3


@dataclass(frozen=True)
class CalibrationSplit:
    train: tuple[int, ...]  # indices into the negatives
    calibration: tuple[int, ...]
    unit: str  # "identity", "photo" or "none" (too few to hold any out)

    def record(self, identities: Sequence[str]) -> dict:
        return {"unit": self.unit, "train": len(self.train), "calibration": len(self.calibration),
                "calibration_identities": sorted({identities[i] for i in self.calibration})}


def identity_of(name: str) -> str:
    """`dog2_00.jpg` -> `dog2`; `rc_car_01.png` -> `rc_car`; `IMG7.jpg` -> `IMG7`."""
    stem = Path(name).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def holdout_ranks(n_units: int, every: int = HOLDOUT_EVERY) -> list[int]:
    """Positions (hardest first) held out: 1, 1 + every, ...; none below MIN_UNITS units."""
    return list(range(1, n_units, every)) if n_units >= MIN_UNITS else []


def no_holdout(n: int) -> CalibrationSplit:
    """`--calibrate-on training`: every negative trains, and enrolment calibrates on them."""
    return CalibrationSplit(tuple(range(n)), (), "none")


def split_for_calibration(identities: Sequence[str], hardness: Sequence[float]) -> CalibrationSplit:
    """Hold out whole identities (or, with too few, photos) for calibration; see the module text.
    `hardness[i]`: negative i's highest cosine to the reference photos under the pretrained model."""
    units = sorted(set(identities))
    unit = "identity"
    if len(units) < MIN_UNITS:
        units, unit = [str(i) for i in range(len(identities))], "photo"
    member = (lambda i: identities[i]) if unit == "identity" else (lambda i: str(i))
    unit_hardness = {u: max(h for i, h in enumerate(hardness) if member(i) == u) for u in units}
    ranked = sorted(units, key=lambda u: (-unit_hardness[u], u))
    held = {ranked[r] for r in holdout_ranks(len(ranked))}
    if not held:
        return no_holdout(len(identities))
    calibration = tuple(i for i in range(len(identities)) if member(i) in held)
    train = tuple(i for i in range(len(identities)) if member(i) not in held)
    return CalibrationSplit(train, calibration, unit)


def generated_holdout(n: int, limit: int) -> tuple[list[int], list[int]]:
    """Generated negatives are alike by construction: every HOLDOUT_EVERY-th from the second on
    (at most `limit`) calibrates, the rest train. Returns (train, calibration) indices."""
    calibration = list(range(1, n, HOLDOUT_EVERY))[:limit] if n >= MIN_UNITS else []
    held = set(calibration)
    return [i for i in range(n) if i not in held], calibration

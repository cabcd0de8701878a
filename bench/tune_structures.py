"""Tune the structure filter offline: decode once, then replay the filter with other profile values.

Run from the repository root::

    .venv/bin/python bench/tune_structures.py dump --seed 1 [--seed 4 ...] [--out bench/scratch-tune]
    .venv/bin/python bench/tune_structures.py replay --seed 1 --seed 2 [--set XC.min_edge=3.0 ...]
    .venv/bin/python bench/tune_structures.py search --seed 1 ... --seed 5 --profile US [--pairs] [--set ...]
    .venv/bin/python bench/tune_structures.py dump --first-try --seed 404   (then replay --first-try ...)

``dump`` runs the automatic mode as the node runs it (``SamSegmenter.explain``: input filter, encoder,
proposals, tight re-prompts) on the generated set of each seed (``samie_node.testing.phantoms``, the same set
as ``bench/quality.py``) and stores every candidate mask, its refined border included, with its measurements
(on the decoded mask and on the refined one) and LiteMedSAM's scores. Decoding is what costs (about a minute
per seed on two cores); the filter is cheap. ``replay`` puts the stored candidates through
``engine.automatic.select`` with the configured profiles, changed by ``--set PROFILE.FIELD=VALUE``, and prints
the quality table per seed and kind (the bench's scoring: Dice of the union, lesion recall, false-positive
area share, lesion-free images with a region) for the configured and the changed profiles side by side. With
no ``--set`` both columns must equal ``bench/quality.py``'s figures for the seed, which checks the replay.
With the verifier (the packaged one unless ``--verifier PATH`` or ``--no-verifier``), every stored candidate
is scored again (``learned``), the filter uses each profile's ``with_verifier`` thresholds as the node does
(``engine.automatic.keeps``), and ``--set`` changes a threshold there when the profile names it there. A
profile's ``border_level`` is not replayed: the refined masks are stored at the level configured when ``dump``
ran. With ``--first-try`` each action works on the first-try set of the seed instead (``first_try_set``, 40
images, modality US; ``bench/quality.py`` reports seed 303), stored in files of their own.

``search`` walks one profile's thresholds over a grid (``GRID``), one field at a time, keeping a value
when it lowers the loss over the stored candidates of the seeds given, until no field changes; the loss
adds, per kind the profile serves, 1 - Dice, 1 - recall, twice the false-positive share and 0.05 per
lesion-free image with a region. With ``--pairs`` each move changes two fields together over their grids
(every pair of fields), which gets out of optima where no single field helps alone (minutes per profile
instead of seconds). It prints the values it ends with and the table before and after. It
finds a local optimum of a few seeds' phantoms: a suggestion to check on real images (``bench/quality.py``)
and on seeds it never saw, not a value to copy.

Tune on some seeds and report on others: a value chosen on the report seed says nothing about new images.
A profile value is only half the check: the suite's real-image tests (``tests/test_segment.py``,
``tests/test_structures.py``, the viewer tests) decide from pydicom's images, where a colour image without
a Modality gets the photograph profile.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samie_node.config import Settings  # noqa: E402
from samie_node.engine.automatic import Region, select  # noqa: E402
from samie_node.engine.models import load_models  # noqa: E402
from samie_node.engine.structures import span, structure_score, work_mask  # noqa: E402
from samie_node.engine.verifier import Verifier, packaged_verifier  # noqa: E402
from samie_node.engine.weights import litemedsam_sha256  # noqa: E402
from samie_node.profiles import StructureProfile  # noqa: E402
from samie_node.testing.phantoms import benchmark_set, first_try_set  # noqa: E402
from samie_node.testing.quality import KIND_MODALITY, KindSummary, score_image, summarise  # noqa: E402

#: The generated set of ``bench/quality.py`` with its defaults (per kind, lesion-free per kind, controls).
SET = (12, 2, 6)
#: The verifier that scores stored candidates (the packaged one; ``--verifier`` names another).
VERIFIER: Verifier | None = None


def _dump_file(out: Path, seed: int, first_try: bool = False) -> Path:
    return out / (f"first-try-seed{seed}.pkl" if first_try else f"candidates-seed{seed}.pkl")


def dump(seeds: list[int], out: Path, first_try: bool = False, kinds: tuple[str, ...] = ()) -> None:
    """Decode every image of each seed once (of ``kinds`` only, when given) and store its candidates."""
    settings = Settings()
    segmenter = load_models(settings).segmenter
    explain = getattr(segmenter, "explain", None)
    if explain is None:
        raise SystemExit("the configured segmenter has no automatic mode to explain")
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        images = []
        for phantom in first_try_set(seed) if first_try else benchmark_set(seed, *SET):
            if kinds and phantom.kind not in kinds:
                continue
            profile, regions = explain(phantom.image, KIND_MODALITY[phantom.kind])
            images.append(
                {
                    "kind": phantom.kind,
                    "profile": profile,
                    "shape": phantom.image.shape[:2],
                    "lesions": [np.packbits(lesion) for lesion in phantom.lesions],
                    "regions": [(np.packbits(r.mask), r.pred_iou, r.stability, r.features, r.score) for r in regions],
                    "refined": [np.packbits(r.mask if r.refined is None else r.refined) for r in regions],
                    "described": [None if r.described is None else r.described.astype(np.float16) for r in regions],
                    "remeasured": [None if r.remeasured is None else r.remeasured.features for r in regions],
                    "border_level": settings.segmenter.profiles[profile].border_level,
                }
            )
        _dump_file(out, seed, first_try).write_bytes(pickle.dumps(images))
        print(f"seed {seed}: {len(images)} images -> {_dump_file(out, seed, first_try)}")


def _unpack(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def learned(images: list[dict[str, Any]], verifier: Verifier | None) -> None:
    """Score the stored candidates' descriptions with ``verifier`` (the ``learned`` feature), so a dump stays
    valid when the verifier is trained again; without one, no candidate has the feature."""
    for image in images:
        described = image.get("described") or [None] * len(image["regions"])
        for (_, _, _, features, _), vector in zip(image["regions"], described, strict=True):
            features.pop("learned", None)
            if verifier is not None and features:
                features["learned"] = verifier.score(vector)


def evaluate(images: list[dict[str, Any]], profiles: dict[str, StructureProfile], max_masks: int) -> list[KindSummary]:
    """The bench's per-kind summary of the stored candidates put through the filter with ``profiles``."""
    scores = []
    for image in images:
        shape = image["shape"]
        regions = [
            Region(_unpack(m, shape), iou, st, f, score, refined=_unpack(refined, shape))
            for (m, iou, st, f, score), refined in zip(image["regions"], image["refined"], strict=True)
        ]
        for region in regions:
            if region.features and "span" not in region.features:  # a dump made before the feature existed
                region.features = {**region.features, "span": span(work_mask(region.mask))}
        for region, features in zip(regions, image["remeasured"], strict=True):
            if features:  # the learned score is the decoded mask's, as in the node (``remeasured``)
                features = {**features, **{k: v for k, v in region.features.items() if k == "learned"}}
                region.remeasured = Region(
                    region.refined,
                    region.pred_iou,
                    region.stability,
                    features,
                    structure_score(features),
                    refined=region.refined,
                )
        kept = select(
            regions, profiles[image["profile"]], max_masks, VERIFIER is not None, lambda region: region.remeasured
        )
        lesions = [_unpack(lesion, shape) for lesion in image["lesions"]]
        scores.append(score_image(image["kind"], [r.refined for r in kept if r.refined is not None], lesions, shape))
    return summarise(scores)


def changed_profiles(base: dict[str, StructureProfile], changes: list[str]) -> dict[str, StructureProfile]:
    """``base`` with each ``PROFILE.FIELD=VALUE`` of ``changes`` applied (validated as the config is)."""
    profiles = dict(base)
    for change in changes:
        target, _, value = change.partition("=")
        name, _, field = target.partition(".")
        if name not in profiles or field not in StructureProfile.model_fields:
            raise SystemExit(f"--set {change}: expected PROFILE.FIELD=VALUE with a profile of {sorted(profiles)}")
        if field == "border_level":
            raise SystemExit(f"--set {change}: the refined masks are stored by `dump`; change the config, dump again")
        profile = profiles[name]
        if VERIFIER is not None and field in profile.with_verifier:  # the value the filter uses is that one
            profiles[name] = profile.model_copy(
                update={"with_verifier": {**profile.with_verifier, field: float(value)}}
            )
        else:
            profiles[name] = StructureProfile.model_validate({**profile.model_dump(), field: value})
    return profiles


#: The values ``search`` tries per profile field.
GRID: dict[str, tuple[float, ...]] = {
    "min_contrast": (2.0, 2.5, 2.8, 3.0, 3.5, 4.0, 4.5),
    "min_z": (0.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0),
    "min_edge": (1.0, 1.3, 1.5, 1.7, 1.9, 2.1, 2.5, 3.0),
    "min_edge_local": (1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.5),
    "min_edge_fine": (0.0, 1.5, 2.0, 2.5, 3.0),
    "min_thickness": (0.4, 0.5, 0.55, 0.6, 0.65, 0.7),
    "distinct_contrast": (3.0, 3.5, 4.0, 4.5, 5.0, 6.0),
    "distinct_z": (6.0, 7.0, 8.0, 9.0, 10.0, 12.0),
    "elongated_thickness": (0.0, 0.55, 0.6, 0.65, 0.7),
    "distinct_min_pred_iou": (0.5, 0.6, 0.65, 0.7, 1.0),
    "distinct_min_stability": (0.4, 0.5, 0.55, 0.6, 1.0),
    "max_span": (0.8, 0.85, 0.9, 0.95, 1.0),
    "min_pred_iou": (0.5, 0.6, 0.65, 0.7, 0.75, 0.8),
    "min_stability": (0.5, 0.6, 0.65, 0.7, 0.75),
    "min_area_fraction": (0.0015, 0.003, 0.005, 0.008),
    "min_learned": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
}


def loss(summaries: list[KindSummary]) -> float:
    """What ``search`` lowers (see the module notes)."""
    total = 0.0
    for summary in summaries:
        total += 0.05 * summary.negatives_with_region
        if summary.lesions:
            total += (1 - summary.mean_dice) + (1 - summary.recall) + 2 * summary.false_positive_share
    return total


def _steps(pairs: bool) -> list[list[tuple[str, float]]]:
    """The moves of one sweep: every value of one field, or with ``pairs`` every two values of two fields."""
    fields = list(GRID)
    if not pairs:
        return [[(field, value)] for field in fields for value in GRID[field]]
    return [
        [(first, a), (second, b)]
        for i, first in enumerate(fields)
        for second in fields[i + 1 :]
        for a in GRID[first]
        for b in GRID[second]
    ]


def search(
    seeds: list[int], out: Path, profile: str, changes: list[str], pairs: bool = False, first_try: bool = False
) -> None:
    """Coordinate search of ``profile``'s thresholds on the stored candidates of ``seeds``."""
    settings = Settings().segmenter
    images = [image for seed in seeds for image in _load(out, seed, first_try) if image["profile"] == profile]
    if not images:
        raise SystemExit(f"no image of these seeds uses the {profile} profile")
    profiles = changed_profiles(settings.profiles, changes)
    start = evaluate(images, profiles, settings.max_masks)
    best = loss(start)
    changed = True
    while changed:
        changed = False
        for step in _steps(pairs):
            trial = changed_profiles(profiles, [f"{profile}.{field}={value}" for field, value in step])
            trial_loss = loss(evaluate(images, trial, settings.max_masks))
            if trial_loss < best - 1e-9:
                best, profiles, changed = trial_loss, trial, True
    ended = profiles[profile].verified() if VERIFIER is not None else profiles[profile]
    print(f"{profile}: " + ", ".join(f"{k} = {v}" for k, v in ended.model_dump(exclude={"with_verifier"}).items()))
    after = {s.kind: s for s in evaluate(images, profiles, settings.max_masks)}
    print("kind | before: Dice / recall / FP share / neg. | after: Dice / recall / FP share / neg.")
    for summary in start:
        print(f"{summary.kind} | {_cell(summary)} | {_cell(after[summary.kind])}")


def _load(out: Path, seed: int, first_try: bool = False) -> list[dict[str, Any]]:
    path = _dump_file(out, seed, first_try)
    command = f"bench/tune_structures.py dump{' --first-try' if first_try else ''} --seed {seed}"
    if not path.exists():
        raise SystemExit(f"{path} not found: run `{command}` first")
    images: list[dict[str, Any]] = pickle.loads(path.read_bytes())
    if images and "described" not in images[0]:
        raise SystemExit(f"{path} predates the learned verifier: run `{command}` again")
    if any(features and "edge_fine" not in features for image in images for *_, features, _ in image["regions"]):
        raise SystemExit(f"{path} predates the feature edge_fine: run `{command}` again")
    if images and "remeasured" not in images[0]:
        raise SystemExit(f"{path} predates the refined border's measurements: run `{command}` again")
    learned(images, VERIFIER)
    profiles = Settings().segmenter.profiles
    for image in images:
        if image.get("border_level", 0.5) != profiles[image["profile"]].border_level:
            raise SystemExit(
                f"{path} was refined at another {image['profile']}.border_level than the config's: "
                f"run `{command}` again"
            )
    return images


def _cell(summary: KindSummary) -> str:
    return (
        f"{summary.mean_dice:.3f} / {summary.recall:.2f} / {summary.false_positive_share:.3f} / "
        f"{summary.negatives_with_region}"
    )


def replay(seeds: list[int], out: Path, changes: list[str], first_try: bool = False) -> None:
    """Print configured vs changed profiles per seed and kind."""
    settings = Settings().segmenter
    changed = changed_profiles(settings.profiles, changes)
    print("seed | kind | configured: Dice / recall / FP share / neg. | changed: Dice / recall / FP share / neg.")
    for seed in seeds:
        images = _load(out, seed, first_try)
        before = evaluate(images, settings.profiles, settings.max_masks)
        after = {s.kind: s for s in evaluate(images, changed, settings.max_masks)}
        for summary in before:
            print(f"{seed} | {summary.kind} | {_cell(summary)} | {_cell(after[summary.kind])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("dump", "replay", "search"))
    parser.add_argument("--seed", type=int, action="append", required=True)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "scratch-tune")
    parser.add_argument("--set", dest="changes", action="append", default=[], help="PROFILE.FIELD=VALUE")
    parser.add_argument("--profile", help="the profile `search` tunes (US, XC, OP, CT, MR, default)")
    parser.add_argument("--pairs", action="store_true", help="`search` moves two fields at a time (slower)")
    parser.add_argument("--first-try", action="store_true", help="the first-try set of each seed (modality US)")
    parser.add_argument("--kind", dest="kinds", action="append", default=[], help="`dump` only these kinds")
    parser.add_argument("--verifier", type=Path, help="score candidates with this verifier (default: the packaged)")
    parser.add_argument("--no-verifier", action="store_true", help="no candidate gets the learned score")
    args = parser.parse_args()
    global VERIFIER
    if not args.no_verifier:
        VERIFIER = Verifier.load(args.verifier) if args.verifier else packaged_verifier(litemedsam_sha256())
    if args.action == "dump":
        dump(args.seed, args.out, args.first_try, tuple(args.kinds))
    elif args.action == "search":
        if not args.profile:
            raise SystemExit("search needs --profile")
        search(args.seed, args.out, args.profile, args.changes, args.pairs, args.first_try)
    else:
        replay(args.seed, args.out, args.changes, args.first_try)


if __name__ == "__main__":
    main()

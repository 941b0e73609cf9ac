"""Post-hoc analyses of a `bench_mias_cv.py` run's out-of-fold predictions (no training).

    python benchmarks/analyse_mias_oof.py CV_OUT [--eval eval-tta] [--patch-maps] [--bootstrap 2000]
        [--only-folds 0 1 2] [--compare OTHER_CV_OUT ...]

For every scoring rule it prints the pooled out-of-fold per-image AUC with a women-clustered bootstrap 95 % CI,
computed on the same images as the benchmark (each predicted once, by the fold model that did not see the woman):

* **whole image**: the fold model's p(malignant), as the benchmark reports it;
* **contralateral difference**: p(image) - p(other breast of the same woman, same view), and the same with
  half the other breast's score. A screening exam always holds both breasts and a cancer is almost always
  unilateral, so the other breast is a per-woman reference for "how suspicious does this woman's tissue look
  to the model";
* **subgroups** (`--subgroups`): the whole-image AUC of malignant images against normal images only and against
  benign-lesion images only (mini-MIAS' negatives are both), within each breast density (fatty, glandular,
  dense), and for each malignant abnormality class against every non-malignant image: where the model fails;
* **patch-classifier map** (`--patch-maps`, ~1 min of CPU per fold): max and 99th percentile of the fold's
  patch classifier's p(malignant) map over the image (stride 16), i.e. the patch stage alone as an image score;
* **other arms** (`--compare`): the whole-image score of other runs of the benchmark on the same folds (e.g. the
  bilateral models), on the same images, each with its paired difference to this run's whole-image AUC
  (women bootstrap of the difference).

`--only-folds` pools the folds given (a run not finished yet); every arm must have them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (NaN with one class): mammokit's, scikit-learn's definition without its per-call validation (the
    bootstrap calls it thousands of times)."""
    from mammokit.metrics.curves import auc_from_curve, binary_curve

    return auc_from_curve(binary_curve(np.asarray(y).astype(int), np.asarray(p)))


def _auc_difference(y: np.ndarray, both: np.ndarray) -> float:
    """AUC of column 0 minus AUC of column 1 on the same images (for a paired bootstrap)."""
    return _auc(y, both[:, 0]) - _auc(y, both[:, 1])


def pooled(cv: Path, eval_name: str, folds: list[int] | None = None) -> pd.DataFrame:
    """Every fold's test predictions (or those of `folds`) as one table with a `fold` column."""
    frames = []
    dirs = sorted(cv.glob("fold*")) if folds is None else [cv / f"fold{k}" for k in folds]
    for fold in dirs:
        path = fold / eval_name / "predictions.csv"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: that fold has not been evaluated; pass --only-folds with those done")
        df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str})
        frames.append(df.assign(fold=fold.name))
    return pd.concat(frames, ignore_index=True)


def contralateral(pred: pd.DataFrame) -> pd.Series:
    """p(malignant) of the other breast in the same exam and view (NaN where there is none)."""
    key = pred.set_index(["exam_id", "view", "laterality"])["prob_uncalibrated"]
    other = {"L": "R", "R": "L"}
    triples = zip(pred["exam_id"], pred["view"], pred["laterality"], strict=True)
    return pd.Series([key.get((e, v, other.get(lat, "")), np.nan) for e, v, lat in triples], index=pred.index)


def with_image_facts(cv: Path, pred: pd.DataFrame) -> pd.DataFrame:
    """`pred` plus each image's density and abnormality classes from its fold's prepared manifest."""
    facts = []
    for fold in sorted(set(pred["fold"])):
        m = pd.read_parquet(
            cv / fold / "prepared" / "manifest.parquet", columns=["image_id", "density", "abnormality_classes"]
        )
        facts.append(m.astype({"image_id": str}))
    table = pd.concat(facts).drop_duplicates("image_id").set_index("image_id")
    return pred.join(table[[c for c in table.columns if c not in pred.columns]], on="image_id")


DENSITY = {"F": "fatty", "G": "glandular", "D": "dense"}


def subgroups(pred: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row masks of the subgroup comparisons (see the module docstring); each holds malignant and negative images."""
    malignant = pred["label"].to_numpy() == 1
    lesion = pred["abnormality_classes"].fillna("NORM").to_numpy() != "NORM"
    normal, benign = ~malignant & ~lesion, ~malignant & lesion
    groups = {
        "malignant vs normal images": malignant | normal,
        "malignant vs benign-lesion images": malignant | benign,
    }
    for code, name in DENSITY.items():
        groups[f"{name} breasts (density {code})"] = pred["density"].to_numpy() == code
    classes = pred["abnormality_classes"].fillna("").to_numpy()
    for cls in sorted({c for row, m in zip(classes, malignant, strict=True) if m for c in str(row).split(",") if c}):
        has = np.array([cls in str(row).split(",") for row in classes])
        groups[f"malignant {cls} vs every non-malignant image"] = (malignant & has) | ~malignant
    return groups


def patch_map_scores(cv: Path, pred: pd.DataFrame) -> pd.DataFrame:
    """Max and 99th percentile of each fold patch classifier's malignant map over its test images."""
    import torch

    from mammokit.io.images import read_png16
    from mammokit.preprocess import to_model_input
    from mammokit.run import load_model
    from mammokit.scoring.patch_maps import malignant_map, patch_probability_maps

    rows = []
    for fold, group in pred.groupby("fold"):
        model, card = load_model(cv / fold / "runs" / "patch", "cpu")
        model.eval()
        images = pd.read_parquet(cv / fold / "prepared" / "manifest.parquet").set_index("image_id")
        for image_id in group["image_id"]:
            png = cv / fold / "prepared" / str(images.loc[image_id, "image_file"])
            x = to_model_input(read_png16(png), card.input.pixel_mean, card.input.pixel_std)
            probs = patch_probability_maps(model, torch.from_numpy(x)[None], (card.input.height, card.input.width), 16)
            m = malignant_map(probs[0], card.labels)
            rows.append({"image_id": image_id, "patch_max": float(m.max()), "patch_p99": float(np.quantile(m, 0.99))})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    from mammokit.metrics.bootstrap import bootstrap_ci

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cv", type=Path, help="a bench_mias_cv.py output folder")
    ap.add_argument("--eval", default="eval-tta", help="the evaluation folder of each fold (default eval-tta)")
    ap.add_argument("--patch-maps", action="store_true", help="also score images with the fold patch classifiers")
    ap.add_argument(
        "--subgroups", action="store_true", help="also the whole-image AUC by negative kind, density, class"
    )
    ap.add_argument("--bootstrap", type=int, default=2000, metavar="N")
    ap.add_argument("--only-folds", type=int, nargs="+", default=None, help="pool just these folds")
    ap.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=[],
        metavar="CV_OUT",
        help="other bench_mias_cv.py runs on the same folds: their whole-image AUC beside this one's",
    )
    args = ap.parse_args(argv)

    pred = pooled(args.cv, args.eval, args.only_folds)
    p = pred["prob_uncalibrated"]
    other = contralateral(pred)
    scores = {"whole image": p, "minus contralateral": p - other, "minus half contralateral": p - 0.5 * other}
    for arm in args.compare:
        theirs = pooled(arm, args.eval, args.only_folds).set_index("image_id")["prob_uncalibrated"]
        if set(theirs.index) != set(pred["image_id"]):
            raise SystemExit(f"{arm} predicted other images than {args.cv}: not the same folds")
        scores[f"{arm.name} (whole image)"] = pred["image_id"].map(theirs)
    if args.patch_maps:
        maps = patch_map_scores(args.cv, pred).set_index("image_id")
        scores["patch map max"] = pred["image_id"].map(maps["patch_max"])
        scores["patch map 99th percentile"] = pred["image_id"].map(maps["patch_p99"])
    y = pred["label"].clip(lower=0).to_numpy().astype(int)
    print(f"{args.cv} / {args.eval}: {len(pred)} images, {y.sum()} malignant, {pred.patient_id.nunique()} women")
    print("| score | pooled OOF AUC (95 % CI, women bootstrap) |\n|---|---|")
    for name, s in scores.items():
        keep = s.notna().to_numpy()
        ci = bootstrap_ci(_auc, y[keep], s.to_numpy()[keep], groups=pred["patient_id"].to_numpy()[keep],
                          n=args.bootstrap, seed=0)  # fmt: skip
        print(f"| {name} | {ci.estimate:.3f} ({ci.low:.3f}-{ci.high:.3f}) |")
    if len(scores) > 1:
        print("\n| score - whole image | paired AUC difference (95 % CI, women bootstrap) |\n|---|---|")
        for name, s in list(scores.items())[1:]:
            keep = s.notna().to_numpy()
            both = np.column_stack([s.to_numpy()[keep], p.to_numpy()[keep]])
            ci = bootstrap_ci(_auc_difference, y[keep], both, groups=pred["patient_id"].to_numpy()[keep],
                              n=args.bootstrap, seed=0)  # fmt: skip
            print(f"| {name} | {ci.estimate:+.3f} ({ci.low:+.3f} to {ci.high:+.3f}) |")
    if args.subgroups:
        pred = with_image_facts(args.cv, pred)
        print("\n| whole-image score, subgroup | images (malignant) | AUC (95 % CI, women bootstrap) |\n|---|---|---|")
        for name, keep in subgroups(pred).items():
            yk, pk, gk = y[keep], p.to_numpy()[keep], pred["patient_id"].to_numpy()[keep]
            if not 0 < yk.sum() < len(yk):
                print(f"| {name} | {len(yk)} ({yk.sum()}) | - |")
                continue
            ci = bootstrap_ci(_auc, yk, pk, groups=gk, n=args.bootstrap, seed=0)
            print(f"| {name} | {len(yk)} ({yk.sum()}) | {ci.estimate:.3f} ({ci.low:.3f}-{ci.high:.3f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Patch sampling (`mammokit patches`): counts, overlap, background screening, classes, splits, determinism.

The prepared folder is built here (small uint16 images with a bright half-ellipse breast, drawn lesions, their
masks and the two Parquet tables), so these tests depend only on the prepared-folder contract.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammokit.cli import main
from mammokit.constants import PATCH_CLASSES_3, PATCH_CLASSES_5
from mammokit.data.manifest import ERRORS_FILE
from mammokit.data.patch_sampling import (
    LesionInfo,
    PatchSamplingError,
    image_rng,
    lesion_class,
    overlap_map,
    sample_image_patches,
    window_sums,
)
from mammokit.data.patches import PatchConfig, default_patch_size, read_patch_set, sample_patches
from mammokit.io.images import read_png16, write_png8, write_png16

H, W, PATCH = 96, 80, 16  # tiny prepared geometry; 16-px patches keep every test well under a second


def _breast(h: int = H, w: int = W) -> np.ndarray:
    """Half-ellipse on the chest-wall (left) side, as in a canonically oriented prepared mammogram."""
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) / (0.46 * h)) ** 2 + (xx / (0.85 * w)) ** 2 <= 1.0


def _disc(cy: float, cx: float, r: float, h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _rect(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _ring(cy: float, cx: float, r_out: float, r_in: float) -> np.ndarray:
    return _disc(cy, cx, r_out) & ~_disc(cy, cx, r_in)


# image_id -> (patient, split, label, [(lesion_type, malignant, mask or None)])
def _dataset() -> dict[str, tuple[str, str, int, list[tuple[str, int, np.ndarray | None]]]]:
    return {
        "img_a": ("p1", "train", 1, [("mass", 1, _disc(30, 20, 6)), ("calcification", 0, _disc(62, 28, 4))]),
        "img_b": ("p2", "val", 0, [("other", 0, _disc(48, 25, 5))]),
        # Several lesions: the first is small, the later ones cover most of the breast. A sampler that screened
        # background only against the first lesion would put most background windows on lesions 2-4.
        "img_c": (
            "p3",
            "test",
            1,
            [
                ("calcification", 1, _disc(48, 8, 3)),
                ("mass", 0, _rect(6, 46, 0, 44)),
                ("mass", 1, _rect(50, 90, 0, 44)),
                ("mass", -1, _rect(44, 52, 20, 44)),  # unknown malignancy: no lesion patch, still not background
            ],
        ),
        "img_d": ("p4", "train", 0, []),  # normal image: background only
        "img_e": ("p5", "train", 1, []),  # malignant without ROI: nothing can be trusted as background
        "img_f": ("p1", "train", 1, [("calcification", 1, _ring(48, 34, 20, 18))]),  # thin ring >> patch
    }


def make_prepared(root: Path, *, height: int = H) -> Path:
    """Write a prepared dataset folder (the `mammokit prepare` contract) and return its path."""
    rng = np.random.default_rng(123)
    images, lesions = [], []
    for image_id, (patient, split, label, findings) in _dataset().items():
        breast = _breast()
        pixels = np.where(breast, 20000 + rng.integers(0, 8000, (H, W)), 0)
        for j, (lesion_type, malignant, mask) in enumerate(findings):
            pixels = np.where(mask, 50000, pixels)
            lesion_id = f"{image_id}_roi{j}"
            write_png8(root / "masks" / f"{lesion_id}.png", mask.astype(np.uint8) * 255)
            lesions.append(
                {
                    "lesion_id": lesion_id,
                    "image_id": image_id,
                    "lesion_type": lesion_type,
                    "pathology": {1: "MALIGNANT", 0: "BENIGN", -1: "UNKNOWN"}[malignant],
                    "malignant": malignant,
                    "roi_kind": "mask",
                    "mask_file": f"masks/{lesion_id}.png",
                }
            )
        write_png16(root / "images" / f"{image_id}.png", pixels.astype(np.uint16))
        images.append(
            {
                "image_id": image_id,
                "patient_id": patient,
                "exam_id": f"{patient}_1",
                "laterality": "L",
                "view": "CC",
                "path": f"raw/{image_id}.dcm",
                "label": label,
                "split": split,
                "dataset": "fixture",
                "image_file": f"images/{image_id}.png",
            }
        )
    pd.DataFrame(images).to_parquet(root / "manifest.parquet", index=False)
    pd.DataFrame(lesions).to_parquet(root / "lesions.parquet", index=False)
    spec = {"height": height, "width": W, "crop_breast": True, "breast_threshold": 0.05, "extra": {"k": 1}}
    (root / "dataset.json").write_text(json.dumps({"source": "fixture", "preprocess": spec}))
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def s10(prepared, tmp_path_factory) -> tuple[Path, pd.DataFrame, dict]:
    out = tmp_path_factory.mktemp("s10") / "patches"
    sample_patches(prepared, out, PatchConfig(scheme="s10", patch_size=PATCH, seed=7))
    table, summary = read_patch_set(out)
    return out, table, summary


def _masks(prepared: Path) -> dict[str, list[np.ndarray]]:
    lesions = pd.read_parquet(prepared / "lesions.parquet")
    out: dict[str, list[np.ndarray]] = {}
    for row in lesions.itertuples():
        from mammokit.io.images import read_png8

        out.setdefault(row.image_id, []).append(read_png8(prepared / row.mask_file) > 0)
    return out


def _overlap(mask: np.ndarray, y0: int, x0: int, size: int) -> float:
    """Independent recomputation of the overlap rule (docs/patches.md) by cropping (no summed-area table)."""
    inside = int(mask[y0 : y0 + size, x0 : x0 + size].sum())
    return max(inside / int(mask.sum()), inside / size**2)


# ---------------------------------------------------------------------------------------------- counts


def test_s10_counts_per_lesion_and_per_image(s10):
    _, table, summary = s10
    lesion = table[table["kind"] == "lesion"]
    per_lesion = lesion.groupby("lesion_id").size()
    # every lesion with known malignancy gets exactly 10; the unknown-malignancy lesion gets none
    assert set(per_lesion.index) == {
        "img_a_roi0",
        "img_a_roi1",
        "img_b_roi0",
        "img_c_roi0",
        "img_c_roi1",
        "img_c_roi2",
        "img_f_roi0",
    }
    assert (per_lesion == 10).all()
    background = table[table["kind"] == "background"].groupby("image_id").size().to_dict()
    # img_e (malignant, no ROI) gives none; the rest 10 each (img_c's small lesion-free area still has 10)
    assert background == {"img_a": 10, "img_b": 10, "img_c": 10, "img_d": 10, "img_f": 10}
    assert summary["n_patches"] == len(table) == 7 * 10 + 5 * 10
    assert summary["n_images_failed"] == 0
    assert summary["scheme"] == "s10" and summary["n_per_lesion"] == 10 and summary["n_background"] == 10
    # lesion windows of one lesion are distinct positions
    assert not lesion.duplicated(["lesion_id", "y0", "x0"]).any()
    assert not table[table["kind"] == "background"].duplicated(["image_id", "y0", "x0"]).any()


def test_s1_one_centred_patch_per_lesion_and_one_background(prepared, tmp_path):
    summary = sample_patches(prepared, tmp_path / "s1", PatchConfig(scheme="s1", patch_size=PATCH, seed=0))
    table, _ = read_patch_set(tmp_path / "s1")
    assert (table[table["kind"] == "lesion"].groupby("lesion_id").size() == 1).all()
    assert len(table[table["kind"] == "lesion"]) == 7
    assert (table[table["kind"] == "background"].groupby("image_id").size() == 1).all()
    assert summary["n_patches"] == 7 + 5
    # centred on the lesion: img_a_roi0 is a disc centred at (30, 20) -> window top-left (22, 12)
    row = table.set_index("lesion_id").loc["img_a_roi0"]
    assert (row["y0"], row["x0"]) == (30 - PATCH // 2, 20 - PATCH // 2)
    assert row["overlap"] == pytest.approx(1.0)
    # a lesion touching the image border: the window is moved inside the image
    assert table[table["kind"] == "lesion"]["x0"].min() >= 0
    assert math.isnan(row["overlap_cutoff"])


def test_scheme_sn_and_overrides(prepared, tmp_path):
    sample_patches(prepared, tmp_path / "s3", PatchConfig(scheme="s3", n_background=2, patch_size=PATCH))
    table, summary = read_patch_set(tmp_path / "s3")
    assert (table[table["kind"] == "lesion"].groupby("lesion_id").size() == 3).all()
    assert (table[table["kind"] == "background"].groupby("image_id").size() == 2).all()
    assert summary["n_per_lesion"] == 3 and summary["n_background"] == 2


# ---------------------------------------------------------------------------------------------- overlap


def test_lesion_patches_reach_min_overlap_where_feasible(s10, prepared):
    _, table, _ = s10
    masks = _masks(prepared)
    lesion = table[(table["kind"] == "lesion") & ~table["fallback"]]
    assert len(lesion) == 60  # all lesions but the ring
    for row in lesion.itertuples():
        j = int(row.lesion_id.rsplit("roi", 1)[1])
        measured = _overlap(masks[row.image_id][j], row.y0, row.x0, row.size)
        assert measured >= 0.9, row.patch_id
        assert measured == pytest.approx(row.overlap)
        assert row.overlap_cutoff == 0.9


def test_fallback_for_a_lesion_where_min_overlap_is_impossible(s10, prepared):
    _, table, summary = s10
    ring = _masks(prepared)["img_f"][0]
    best = overlap_map(ring, PATCH).max()
    assert best < 0.9  # the criterion really is impossible for this lesion
    rows = table[table["lesion_id"] == "img_f_roi0"]
    assert rows["fallback"].all() and len(rows) == 10
    cutoff = rows["overlap_cutoff"].iloc[0]
    # cutoff lowered in 0.05 steps from 0.9 to the first value some window reaches
    assert cutoff <= best < cutoff + 0.05 + 1e-9
    assert round((0.9 - cutoff) / 0.05, 6) == round((0.9 - cutoff) / 0.05)
    for row in rows.itertuples():
        assert _overlap(ring, row.y0, row.x0, row.size) >= cutoff - 1e-9
    assert summary["n_fallback_lesions"] == 1
    assert not table.loc[table["lesion_id"] != "img_f_roi0", "fallback"].any()


def test_window_sums_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((13, 11)) > 0.6
    sums = window_sums(mask, 4)
    assert sums.shape == (10, 8)
    for y in range(10):
        for x in range(8):
            assert sums[y, x] == mask[y : y + 4, x : x + 4].sum()


def test_overlap_map_matches_brute_force_including_border_lesions():
    rng = np.random.default_rng(1)
    for _ in range(3):
        mask = np.zeros((30, 26), dtype=bool)
        y, x = rng.integers(0, 24), rng.integers(0, 20)
        mask[y : y + rng.integers(1, 7), x : x + rng.integers(1, 7)] = True
        mask[0, 25] = True  # a speck in the corner stretches the bounding box to the border
        fast = overlap_map(mask, 8)
        for y0 in range(23):
            for x0 in range(19):
                assert fast[y0, x0] == pytest.approx(_overlap(mask, y0, x0, 8))


# ---------------------------------------------------------------------------------------------- background


def test_background_overlaps_no_lesion_of_its_image(s10, prepared):
    _, table, _ = s10
    masks = _masks(prepared)
    background = table[table["kind"] == "background"]
    for row in background.itertuples():
        for mask in masks.get(row.image_id, []):
            assert mask[row.y0 : row.y0 + row.size, row.x0 : row.x0 + row.size].sum() == 0, row.patch_id
        assert row.overlap == 0.0 and row.lesion_id == "" and row.class_name == "background"


def test_multi_lesion_image_would_fail_with_first_lesion_screening(prepared):
    """img_c: windows clear of the first lesion and on breast mostly hit another lesion; ours never do."""
    masks = _masks(prepared)["img_c"]
    breast = _breast()
    on_breast = window_sums(breast, PATCH) >= 0.5 * PATCH * PATCH
    clear_of_first = window_sums(masks[0], PATCH) == 0
    others = window_sums(np.logical_or.reduce(masks[1:]), PATCH) > 0
    first_only = on_breast & clear_of_first
    # More than half of those windows touch lesions 2-4, so 10 background draws screened against the first
    # lesion only would all be clean with probability < 0.5**10: the original's rule fails here.
    assert (first_only & others).sum() / first_only.sum() > 0.5
    image = read_png16(prepared / "images" / "img_c.png")
    infos = [LesionInfo(f"l{i}", "mass", 1) for i in range(len(masks))]
    for seed in range(5):
        boxes = sample_image_patches(
            image, masks, infos, image_rng(seed, "img_c"), n_per_lesion=0, n_background=10, patch_size=PATCH
        )
        assert len(boxes) == 10
        for b in boxes:
            assert not any(m[b.y0 : b.y0 + b.size, b.x0 : b.x0 + b.size].any() for m in masks)


def test_background_lies_mostly_on_breast(s10):
    _, table, _ = s10
    background = table[table["kind"] == "background"]
    breast = _breast()
    for row in background.itertuples():
        fraction = breast[row.y0 : row.y0 + row.size, row.x0 : row.x0 + row.size].mean()
        assert fraction >= 0.5, row.patch_id
        assert row.breast_fraction == pytest.approx(fraction)


def test_background_breast_fraction_threshold_is_applied(s10, prepared, tmp_path):
    _, loose, _ = s10  # default threshold 0.5 lets windows reach into the dark background
    assert (loose.loc[loose["kind"] == "background", "breast_fraction"] < 1.0).any()
    strict = sample_patches(
        prepared,
        tmp_path / "strict",
        PatchConfig(scheme="s1", n_background=10, patch_size=24, background_breast_fraction=1.0),
    )
    table, _ = read_patch_set(tmp_path / "strict")
    background = table[table["kind"] == "background"]
    assert (background["breast_fraction"] == 1.0).all()
    assert background.groupby("image_id").size().to_dict() == {"img_a": 10, "img_b": 10, "img_d": 10, "img_f": 10}
    # img_c has no lesion-free 24-px window fully on breast: no background there, counted in the summary
    assert strict["n_images_short_of_background"] == 1


def test_shortfall_when_no_lesion_free_breast_window(prepared):
    image = read_png16(prepared / "images" / "img_a.png")
    everything = np.ones((H, W), dtype=bool)
    boxes = sample_image_patches(
        image, [everything], [LesionInfo("x", "mass", 1)], image_rng(0, "a"), n_per_lesion=2, n_background=5,
        patch_size=PATCH,
    )  # fmt: skip
    assert [b.kind for b in boxes] == ["lesion", "lesion"]


# ---------------------------------------------------------------------------------------------- classes


def test_five_classes(s10):
    _, table, summary = s10
    assert summary["classes"] == list(PATCH_CLASSES_5)
    by_lesion = table[table["kind"] == "lesion"].groupby("lesion_id")["class_name"].first().to_dict()
    assert by_lesion["img_a_roi0"] == "mass_malignant"
    assert by_lesion["img_a_roi1"] == "calc_benign"
    assert by_lesion["img_b_roi0"] == "mass_benign"  # lesion type "other" is classed as mass
    assert by_lesion["img_c_roi0"] == "calc_malignant"
    for row in table.itertuples():
        assert PATCH_CLASSES_5[row.class_index] == row.class_name


def test_three_classes(prepared, tmp_path):
    sample_patches(prepared, tmp_path / "c3", PatchConfig(scheme="s1", classes=3, patch_size=PATCH))
    table, summary = read_patch_set(tmp_path / "c3")
    assert summary["classes"] == list(PATCH_CLASSES_3)
    by_lesion = table[table["kind"] == "lesion"].set_index("lesion_id")
    assert by_lesion.loc["img_a_roi0", "class_name"] == "malignant"
    assert by_lesion.loc["img_a_roi1", "class_name"] == "benign"
    assert by_lesion.loc["img_c_roi0", "class_index"] == PATCH_CLASSES_3.index("malignant") == 2
    assert set(table.loc[table["kind"] == "background", "class_index"]) == {0}


@pytest.mark.parametrize(
    ("lesion_type", "malignant", "classes", "expected"),
    [
        ("calcification", 1, 5, "calc_malignant"),
        ("calcification", 0, 5, "calc_benign"),
        ("mass", 1, 5, "mass_malignant"),
        ("other", 1, 5, "mass_malignant"),
        ("mass", 0, 3, "benign"),
        ("calcification", 1, 3, "malignant"),
        ("mass", -1, 5, None),
    ],
)
def test_lesion_class_mapping(lesion_type, malignant, classes, expected):
    assert lesion_class(lesion_type, malignant, classes) == expected


# ---------------------------------------------------------------------------------------------- manifest


def test_split_and_patient_inherited_and_summary(s10, prepared):
    out, table, summary = s10
    manifest = pd.read_parquet(prepared / "manifest.parquet").set_index("image_id")
    assert (table["split"].to_numpy() == manifest.loc[table["image_id"], "split"].to_numpy()).all()
    assert (table["patient_id"].to_numpy() == manifest.loc[table["image_id"], "patient_id"].to_numpy()).all()
    assert summary["counts"]["val"] == {
        "background": 10,
        "calc_benign": 0,
        "calc_malignant": 0,
        "mass_benign": 10,
        "mass_malignant": 0,
    }
    assert sum(sum(c.values()) for c in summary["counts"].values()) == len(table)
    assert summary["source"]["preprocess"]["extra"] == {"k": 1}  # copied through verbatim
    assert summary["source"]["prepared"] == str(prepared.resolve())
    assert summary["patch_size"] == PATCH and summary["seed"] == 7
    assert (out / "config.yaml").is_file() and (out / "errors.csv").is_file()


def test_patch_pixels_are_the_image_crop(s10, prepared):
    out, table, _ = s10
    for row in table.iloc[::17].itertuples():
        patch = read_png16(out / row.patch_file)
        image = read_png16(prepared / "images" / f"{row.image_id}.png")
        assert patch.dtype == np.uint16 and patch.shape == (PATCH, PATCH)
        np.testing.assert_array_equal(patch, image[row.y0 : row.y0 + PATCH, row.x0 : row.x0 + PATCH])


def test_patch_dataset_reads_the_patch_set(s10):
    from mammokit.data.datasets import PatchDataset

    out, table, _ = s10
    ds = PatchDataset(out, table, mean=0.5, std=0.25)
    sample = ds[3]
    assert tuple(sample["image"].shape) == (1, PATCH, PATCH)
    assert sample["label"] == table["class_index"].iloc[3]


# ---------------------------------------------------------------------------------------------- determinism


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*.png"))}


def test_same_seed_identical_different_seed_different(s10, prepared, tmp_path):
    out, table, _ = s10
    again = tmp_path / "again"
    sample_patches(
        prepared, again, PatchConfig(scheme="s10", patch_size=PATCH, seed=7, workers=2)
    )  # worker count irrelevant
    table2, _ = read_patch_set(again)
    pd.testing.assert_frame_equal(table, table2)
    assert _folder_bytes(out) == _folder_bytes(again)
    assert (out / "patches.parquet").read_bytes() == (again / "patches.parquet").read_bytes()

    other = tmp_path / "other"
    sample_patches(prepared, other, PatchConfig(scheme="s10", patch_size=PATCH, seed=8))
    table3, _ = read_patch_set(other)
    assert list(table3["patch_id"]) == list(table["patch_id"])  # same structure ...
    moved = (table3[["y0", "x0"]].to_numpy() != table[["y0", "x0"]].to_numpy()).any(axis=1)
    assert moved.mean() > 0.5  # ... different windows


# ---------------------------------------------------------------------------------------------- errors, sizes


def test_bad_image_and_mask_are_reported_and_skipped(tmp_path):
    prepared = make_prepared(tmp_path / "prep")
    (prepared / "images" / "img_b.png").write_bytes(b"not a png")
    (prepared / "masks" / "img_a_roi1.png").unlink()
    summary = sample_patches(prepared, tmp_path / "out", PatchConfig(scheme="s1", patch_size=PATCH))
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert set(errors["image_id"]) == {"img_a", "img_b"}
    assert summary["n_images_failed"] == 2
    table, _ = read_patch_set(tmp_path / "out")
    assert not set(table["image_id"]) & {"img_a", "img_b"}
    assert set(table["image_id"]) == {"img_c", "img_d", "img_f"}


def test_mask_geometry_mismatch_is_an_error():
    image = np.full((40, 40), 30000, dtype=np.uint16)
    with pytest.raises(PatchSamplingError, match="mask of lesion m is 20x40"):
        sample_image_patches(
            image, [np.ones((20, 40), bool)], [LesionInfo("m", "mass", 1)], image_rng(0, "x"),
            n_per_lesion=1, n_background=1, patch_size=8,
        )  # fmt: skip
    with pytest.raises(PatchSamplingError, match="smaller than the 64-pixel patch"):
        sample_image_patches(image, [], [], image_rng(0, "x"), n_per_lesion=1, n_background=1, patch_size=64)


def test_existing_nonempty_output_is_refused(prepared, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(PatchSamplingError, match="not empty"):
        sample_patches(prepared, tmp_path / "full", PatchConfig(patch_size=PATCH))
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["full"]  # no staging folder left behind


def test_default_patch_size_scales_with_prepared_height(tmp_path):
    assert default_patch_size(1152) == 224
    assert default_patch_size(576) == 112
    assert default_patch_size(320) == 62
    prepared = make_prepared(tmp_path / "prep", height=H)
    summary = sample_patches(prepared, tmp_path / "out", PatchConfig(scheme="s1"))
    assert summary["patch_size"] == round(224 * H / 1152) == 19
    assert summary["patch_size_rule"] == "round(224 * 96 / 1152)"


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_writes_patch_set_and_resolved_config(prepared, tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("min_overlap: 0.8\nbackground_breast_fraction: 0.6\n")
    out = tmp_path / "cli"
    status = main(
        ["patches", "--data", str(prepared), "--out", str(out), "--scheme", "s2", "--classes", "3",
         "--patch-size", str(PATCH), "--seed", "3", "-c", str(cfg), "--set", "n_background=1"]
    )  # fmt: skip
    assert status == 0
    summary = json.loads((out / "patches.json").read_text())
    assert summary["classes"] == list(PATCH_CLASSES_3)
    assert summary["min_overlap"] == 0.8 and summary["background_breast_fraction"] == 0.6
    assert summary["n_per_lesion"] == 2 and summary["n_background"] == 1 and summary["seed"] == 3
    resolved = (out / "config.yaml").read_text()
    assert "scheme: s2" in resolved and "classes: 3" in resolved and "n_background: 1" in resolved


def test_cli_user_errors(prepared, tmp_path, capsys):
    assert main(["patches", "--data", str(prepared), "--out", str(tmp_path / "x"), "--scheme", "ten"]) == 2
    assert "scheme must look like s1, s10 or sN" in capsys.readouterr().err
    assert main(["patches", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2
    assert "manifest.parquet not found" in capsys.readouterr().err
    assert main(["patches", "--data", str(prepared), "--out", str(tmp_path / "z"), "--set", "min_overlab=1"]) == 2
    assert "did you mean 'min_overlap'" in capsys.readouterr().err


def test_manifest_paths_may_not_leave_the_folder_but_symlinked_folders_are_read(prepared, tmp_path):
    """`inside` refuses `..` and absolute paths written in a table; a prepared folder whose images/ and masks/
    are symlinks to another place (a dataset on another disk) is read like any other."""
    import shutil

    from mammokit.utils.paths import UnsafeNameError, inside

    for bad in ("../images/a.png", "images/../../a.png", "/etc/passwd", "", ".."):
        with pytest.raises(UnsafeNameError, match="points outside"):
            inside(tmp_path, bad, "image_file")
    assert inside(tmp_path, "images/../images/a.png") == tmp_path / "images/../images/a.png"

    linked = tmp_path / "linked"
    linked.mkdir()
    for item in prepared.iterdir():
        if item.is_dir():
            (linked / item.name).symlink_to(item.resolve(), target_is_directory=True)
        else:
            shutil.copy(item, linked / item.name)
    sample_patches(linked, tmp_path / "a", PatchConfig(scheme="s10", patch_size=PATCH, seed=7))
    sample_patches(prepared, tmp_path / "b", PatchConfig(scheme="s10", patch_size=PATCH, seed=7))
    a, _ = read_patch_set(tmp_path / "a")
    b, _ = read_patch_set(tmp_path / "b")
    assert len(a) > 0 and len(pd.read_csv(tmp_path / "a" / "errors.csv")) == 0  # a header, no row
    assert a.drop(columns=[c for c in a.columns if "file" in c or "path" in c]).equals(
        b.drop(columns=[c for c in b.columns if "file" in c or "path" in c])
    )


# --- hard negatives ----------------------------------------------------------------------------------------------


def test_hard_negatives_are_the_top_scoring_lesion_free_windows_spread_apart():
    image = np.where(_breast(), 30000, 0).astype(np.uint16)
    lesion = _disc(30, 20, 6)
    info = [LesionInfo("l0", "mass", 1)]
    hot = (70, 40)  # a bright "lesion-like" spot of normal tissue: the score peaks there

    def scores(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return -np.hypot(ys + PATCH // 2 - hot[0], xs + PATCH // 2 - hot[1])

    kwargs = {"n_per_lesion": 3, "n_background": 10, "patch_size": PATCH}
    plain = sample_image_patches(image, [lesion], info, np.random.default_rng(1), **kwargs)
    same = sample_image_patches(image, [lesion], info, np.random.default_rng(1), **kwargs, hard_fraction=0.5)
    assert plain == same  # no scores: exactly the uniform draw (patch sets stay byte-identical)

    boxes = sample_image_patches(
        image, [lesion], info, np.random.default_rng(1), **kwargs, window_scores=scores, hard_fraction=0.4
    )
    background = [b for b in boxes if b.kind == "background"]
    hard = [b for b in background if b.hard_negative]
    assert len(background) == 10 and len(hard) == 4
    first = hard[0]  # the best window is centred on the hot spot
    assert (first.y0 + PATCH // 2, first.x0 + PATCH // 2) == hot
    for i, a in enumerate(hard):  # spread: no two hard windows closer than half a patch in both y and x
        for b in hard[i + 1 :]:
            assert abs(a.y0 - b.y0) >= PATCH // 2 or abs(a.x0 - b.x0) >= PATCH // 2
    assert len({(b.y0, b.x0) for b in background}) == 10  # the uniform draw excludes the hard windows
    for b in background:
        assert _overlap(lesion, b.y0, b.x0, PATCH) == 0 and b.breast_fraction >= 0.5
    with pytest.raises(PatchSamplingError, match="window scores"):
        sample_image_patches(
            image, [lesion], info, np.random.default_rng(1), **kwargs,
            window_scores=lambda ys, xs: np.zeros(3), hard_fraction=0.5,
        )  # fmt: skip


def _random_patch_run(root: Path, size: int, height: int = H) -> Path:
    import torch

    from mammokit.constants import PATCH_CLASSES_5
    from mammokit.models.registry import create_model
    from mammokit.preprocess import PreprocessSpec
    from mammokit.run import InputSpec, ModelCard, save_run

    torch.manual_seed(0)
    model = create_model("patch_classifier", backbone="resnet18", num_classes=5, pretrained=None).eval()
    card = ModelCard(
        task="patch",
        arch="patch_classifier",
        arch_kwargs=model.arch_kwargs,
        input=InputSpec(size, size, preprocess=PreprocessSpec(height=height, width=W)),
        labels=list(PATCH_CLASSES_5),
        positive_labels=["calc_malignant", "mass_malignant"],
        threshold=0.5,
    )
    return save_run(root / f"patch{size}-{height}", model, card)


def test_patches_with_hard_negatives_from_a_patch_run(prepared, tmp_path):
    run = _random_patch_run(tmp_path, PATCH)
    out = tmp_path / "hard"
    argv = ["patches", "--data", str(prepared), "--out", str(out), "--scheme", "s10", "--patch-size", str(PATCH)]
    # one worker: hard-negative workers are spawned (they run torch), and each spawn re-imports torch
    code = main(
        [*argv, "--seed", "7", "--workers", "1", "--hard-negatives", str(run), "--hard-negative-fraction", "0.3"]
    )
    errors = out / ERRORS_FILE
    assert code == 0, errors.read_text() if errors.is_file() else "no errors.csv"
    table, summary = read_patch_set(out)
    background = table[table["kind"] == "background"]
    per_image = background.groupby("image_id")["hard_negative"].agg(["sum", "size"])
    assert (per_image["sum"] == 3).all() and (per_image["size"] == 10).all()  # round(0.3 x 10) of each image's 10
    assert not table.loc[table["kind"] == "lesion", "hard_negative"].any()
    hard = summary["hard_negatives"]
    assert hard["run"] == str(run.resolve()) and hard["fraction"] == 0.3 and hard["n_patches"] == 3 * len(per_image)
    assert len(hard["weights_sha256"]) == 64
    masks = _masks(prepared)
    for row in background.itertuples():  # still lesion-free
        for m in masks.get(row.image_id, []):
            assert _overlap(m, row.y0, row.x0, PATCH) == 0

    sample_patches(prepared, tmp_path / "plain", PatchConfig(scheme="s10", patch_size=PATCH, seed=7))
    plain, plain_summary = read_patch_set(tmp_path / "plain")
    assert plain_summary["hard_negatives"] is None and not plain["hard_negative"].any()
    lesions = ["patch_id", "y0", "x0", "class_name"]
    pd.testing.assert_frame_equal(  # lesion patches do not depend on the background rule
        plain.loc[plain["kind"] == "lesion", lesions].reset_index(drop=True),
        table.loc[table["kind"] == "lesion", lesions].reset_index(drop=True),
    )

    with pytest.raises(PatchSamplingError, match="trained on 24x24 patches"):
        sample_patches(prepared, tmp_path / "bad", PatchConfig(patch_size=PATCH, hard_negative_run=str(
            _random_patch_run(tmp_path, 24))))  # fmt: skip
    with pytest.raises(PatchSamplingError, match=r"prepared differently \(preprocess.height: 128"):
        sample_patches(prepared, tmp_path / "bad", PatchConfig(patch_size=PATCH, hard_negative_run=str(
            _random_patch_run(tmp_path, PATCH, height=128))))  # fmt: skip
    assert not (tmp_path / "bad").exists()  # refused before anything is written

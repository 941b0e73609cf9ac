"""Prediction inputs: files, recursive folders (incl. extension-less DICOM), CSV lists, unique image ids."""

from __future__ import annotations

from mammokit.infer.inputs import collect_inputs, is_dicom_file


def _dicom_like(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    return path


def test_folder_is_searched_recursively_by_extension_and_dicom_magic(tmp_path):
    a = _dicom_like(tmp_path / "case1" / "CC" / "1-1.dcm")
    b = _dicom_like(tmp_path / "case2" / "MLO" / "IM0001")  # no extension: found by the DICM magic
    (tmp_path / "case2" / "notes.txt").write_text("not an image")
    (tmp_path / "case2" / "README").write_text("no magic, no extension")
    png = tmp_path / "x" / "scan.PNG"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG")
    items = collect_inputs([tmp_path])
    assert {i.path for i in items} == {a, b, png}
    assert is_dicom_file(b) and not is_dicom_file(tmp_path / "case2" / "README")


def test_colliding_stems_get_folder_prefixes(tmp_path):
    # the CBIS-DDSM layout: every image is 1-1.dcm in its own folder
    paths = [_dicom_like(tmp_path / f"Mass-Test_{side}" / "07-20-2016" / "1-1.dcm") for side in ("L_CC", "R_MLO")]
    unique = _dicom_like(tmp_path / "other" / "2-1.dcm")
    items = collect_inputs([tmp_path])
    ids = {i.path: i.image_id for i in items}
    assert ids[unique] == "2-1"
    assert ids[paths[0]] != ids[paths[1]]
    assert ids[paths[0]] == "Mass-Test_L_CC_07-20-2016_1-1"


def test_csv_list_with_ids_and_relative_paths(tmp_path):
    img = _dicom_like(tmp_path / "imgs" / "a.dcm")
    listing = tmp_path / "list.csv"
    listing.write_text("path,image_id\nimgs/a.dcm,case 7/L CC\nmissing.dcm,\n")
    items = collect_inputs([listing])
    assert items[0].path == img and items[0].image_id == "case_7_L_CC"  # made safe for file names
    assert items[1].image_id == "missing" and not items[1].path.exists()  # reported later, per item
    assert all(i.source == str(listing) for i in items)


def test_unusable_arguments_become_error_items_not_batch_failures(tmp_path):
    """Batch rule: an argument that cannot be used is an errors.csv row with a reason; the rest still runs."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.dcm").mkdir()  # a folder named like an image
    good = _dicom_like(tmp_path / "in" / "a.dcm")
    bad_csv = tmp_path / "l.csv"
    bad_csv.write_text("file\nx.dcm\n")
    items = collect_inputs([tmp_path / "empty", tmp_path / "x.dcm", bad_csv, good])
    errors = [i.error or "" for i in items]
    assert "a folder with no images" in errors[0] and "a folder with no images" in errors[1]
    assert "'path' column" in errors[2]
    assert items[3].path == good and items[3].error is None


def test_output_folder_is_never_read(tmp_path):
    """`predict --out` inside an input folder: the next run must not read its own overlays."""
    _dicom_like(tmp_path / "in" / "a.dcm")
    out = tmp_path / "in" / "preds"
    _dicom_like(out / "heatmaps" / "a_gradcam.png")
    items = collect_inputs([tmp_path / "in"], exclude=out)
    assert [i.path.name for i in items] == ["a.dcm"]
    explicit = collect_inputs([out / "heatmaps" / "a_gradcam.png"], exclude=out)
    assert "inside the output folder" in (explicit[0].error or "")

"""Tests for keras_cvx.data.coco: the target contract on synthetic data, and bad/special data."""

import io
import json
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from keras_cvx.data.coco import (
    DataWarning,
    check_annotations,
    check_image_bytes,
    class_id_map,
    coco_dataset,
    load_coco,
    prepare_example,
)
from keras_cvx.data.shapes import synthetic_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    path = synthetic_shapes(str(out), num_images=4, image_size=(48, 64), num_classes=3, max_objects=4, seed=7)
    return path, str(out / "images")


def test_contract_on_synthetic_data(shapes):
    path, image_dir = shapes
    coco = COCO(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # clean data: nothing to report
        ds = coco_dataset(path, image_dir, (32, 32), max_instances=6, batch_size=2, training=False, mask_stride=4)
        batches = list(ds)
    assert len(batches) == 2
    images, targets = batches[0]
    assert images.shape == (2, 32, 32, 3) and images.dtype == tf.float32
    assert targets["boxes"].shape == (2, 6, 4) and targets["labels"].dtype == tf.int32
    assert targets["masks"].shape == (2, 6, 8, 8) and targets["masks"].dtype == tf.uint8
    scale = 0.5  # min(32 / 48, 32 / 64)
    np.testing.assert_allclose(targets["image_info"]["scale"].numpy(), [scale, scale])
    id_map = {v: k for k, v in class_id_map(coco).items()}
    for b in range(2):
        image_id = int(targets["image_info"]["image_id"][b])
        assert (targets["image_info"]["height"][b], targets["image_info"]["width"][b]) == (48, 64)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        n = len(anns)
        np.testing.assert_allclose(targets["boxes"][b, :n].numpy(), expected * scale, atol=1e-5)
        np.testing.assert_array_equal(targets["boxes"][b, n:].numpy(), 0.0)
        np.testing.assert_array_equal(targets["labels"][b].numpy(), [id_map[a["category_id"]] for a in anns] + [-1] * (6 - n))
        for i, ann in enumerate(anns):
            # the mask on the stride-4 grid covers about area * (scale / 4)^2 cells
            cells = targets["masks"][b, i].numpy().sum()
            assert abs(cells - ann["area"] * (scale / 4) ** 2) <= 0.5 * ann["area"] * (scale / 4) ** 2 + 3
        assert targets["masks"][b, n:].numpy().sum() == 0
    # image pixels: resized image in the top-left 24x32, zeros below
    assert images[0, :24].numpy().max() > 50 and images[0, 24:].numpy().max() == 0.0


def _write_image(path, height, width, value=90):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


@pytest.fixture()
def special(tmp_path):
    _write_image(tmp_path / "a.png", 20, 30)
    _write_image(tmp_path / "b.png", 10, 10)
    rect = np.zeros((20, 30), np.uint8)
    rect[4:12, 6:14] = 1
    rle = mask_utils.encode(np.asfortranarray(rect))
    rle["counts"] = rle["counts"].decode("ascii")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [6, 4, 8, 8], "segmentation": rle, "iscrowd": 0, "area": 64},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 30, 20], "segmentation": rle, "iscrowd": 1, "area": 600},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 4], "segmentation": [], "iscrowd": 0, "area": 0},
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [40, 2, 5, 5], "segmentation": [], "iscrowd": 0, "area": 25},
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [25, -3, 10, 8], "segmentation": [[25, 0, 30, 0, 30, 5]], "iscrowd": 0, "area": 30},
        {"id": 6, "image_id": 1, "category_id": 99, "bbox": [1, 1, 3, 3], "segmentation": [], "iscrowd": 0, "area": 9},
        {"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, "nan", 3], "segmentation": [], "iscrowd": 0, "area": 9},
    ]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                   {"id": 2, "file_name": "b.png", "height": 10, "width": 10}],
        "annotations": anns,
        "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return str(path), str(tmp_path)


def test_crowd_zero_area_outside_and_empty_images(special):
    path, image_dir = special
    with pytest.warns(DataWarning) as record:
        ds = coco_dataset(path, image_dir, (20, 30), max_instances=4, batch_size=2, training=False, mask_stride=2)
    assert [w.message.counts for w in record] == [{"malformed_bbox": 1, "unknown_category": 1, "empty_box": 2}]
    images, targets = next(iter(ds))
    # kept: ann 1 (label 1) and ann 5 clipped to the image (label 0); crowd, zero-area,
    # outside, unknown category and NaN boxes are dropped
    np.testing.assert_array_equal(targets["labels"].numpy(), [[1, 0, -1, -1], [-1, -1, -1, -1]])
    np.testing.assert_allclose(targets["boxes"][0, :2].numpy(), [[6, 4, 14, 12], [25, 0, 30, 5]])
    np.testing.assert_array_equal(targets["boxes"][1].numpy(), 0.0)
    assert not np.isnan(targets["boxes"].numpy()).any()
    expected = np.zeros((10, 15), np.uint8)
    expected[2:6, 3:7] = 1  # the 8x8 square at (6, 4) on the stride-2 grid
    np.testing.assert_array_equal(targets["masks"][0, 0].numpy(), expected)
    # second image (10x10, no objects) scaled by 2 and padded
    assert float(targets["image_info"]["scale"][1]) == 2.0
    np.testing.assert_allclose(images[1, :, :20].numpy(), 90.0, atol=1e-3)
    np.testing.assert_array_equal(images[1, :, 20:].numpy(), 0.0)


def test_max_instances_truncates(special):
    path, image_dir = special
    with pytest.warns(DataWarning, match="1 annotation.s. beyond max_instances=1 .*first: image 1, annotation 5") as w:
        ds = coco_dataset(path, image_dir, (20, 30), max_instances=1, batch_size=1, training=False)
    assert w[0].message.counts["beyond_max_instances"] == 1  # anns 1 and 5 survive, 5 is dropped
    _, targets = next(iter(ds))
    np.testing.assert_array_equal(targets["labels"].numpy(), [[1]])


def test_training_flips_and_repeats(special):
    path, image_dir = special
    with pytest.warns(DataWarning):
        ds = coco_dataset(path, image_dir, (20, 30), max_instances=2, batch_size=1, training=True, seed=1)
    seen = set()
    for _, targets in ds.take(16):
        if int(targets["image_info"]["image_id"][0]) == 1:
            seen.add(tuple(targets["boxes"][0, 0].numpy().tolist()))
    assert seen == {(6.0, 4.0, 14.0, 12.0), (16.0, 4.0, 24.0, 12.0)}  # as is, and mirrored in width 30


def test_prepare_example_flips_masks_with_boxes():
    image = tf.zeros((4, 6, 3), tf.uint8)
    masks = np.zeros((1, 4, 6), np.uint8)
    masks[0, 1:3, 0:2] = 1
    _, targets = prepare_example(
        image, tf.constant(5, tf.int64), tf.constant([[0.0, 1.0, 2.0, 3.0]]), tf.constant([0]),
        tf.constant([False]), tf.constant(masks), tf.constant(True), (4, 6), 2, 1,
    )
    np.testing.assert_allclose(targets["boxes"].numpy(), [[4, 1, 6, 3], [0, 0, 0, 0]])
    np.testing.assert_array_equal(targets["masks"][0].numpy(), masks[0][:, ::-1])


def test_truncated_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [{"id": 1, "file_na')
    with pytest.raises(ValueError, match="broken.json"):
        coco_dataset(str(path), str(tmp_path), (8, 8), 2, 1, False)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="broken.json"):
        load_coco(str(path))


def test_rejects_bad_arguments(special):
    path, image_dir = special
    with pytest.raises(ValueError, match="mask_stride"):
        coco_dataset(path, image_dir, (20, 30), 2, 1, False, mask_stride=4)
    with pytest.raises(ValueError, match="max_instances"):
        coco_dataset(path, image_dir, (20, 30), 0, 1, False)


# ---- bad data: counts, strict mode, class ids, files (issue 16) ----

def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _ann(ann_id, image_id, bbox, category_id=3, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0,
            "area": 1.0, "segmentation": [[1, 1, 8, 1, 8, 8]], **extra}


def _write_json(tmp_path, images, annotations, name="ann.json"):
    """Writes ``images`` (``(id, file_name, json (h, w), file (h, w) or None)``) and the json."""
    entries = []
    for image_id, file_name, (height, width), file_size in images:
        if file_size is not None:
            _write_image(tmp_path / file_name, *file_size)
        entries.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    data = {"images": entries, "annotations": annotations,
            "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture()
def problems(tmp_path):
    """One of each kind of problem; images are 32x40 (height x width)."""
    wrong_size = _rle(np.ones((10, 10)))
    annotations = [
        _ann(1, 1, [0, 0, 10, 10]),                                # kept
        _ann(2, 1, [5, 5, 10, 10], segmentation=[]),               # kept, unusable segmentation (masks only)
        _ann(3, 1, [1, 1, 4, 4]),                                  # beyond max_instances=2
        _ann(4, 1, [1, 1, 4, 4], category_id=99),                  # unknown category
        _ann(5, 77, [1, 1, 4, 4]),                                 # unknown image id
        _ann(6, 2, [1, 2, 3]),                                     # malformed: 3 numbers
        _ann(7, 2, [1, 2, "5", 4]),                                # malformed: a string
        _ann(8, 2, [50, 1, 5, 5]),                                 # empty: right of the 40-wide image
        _ann(9, 2, [0, 0, 40, 32], category_id=7, iscrowd=1),      # crowd: excluded, not counted
        _ann(10, 2, [2, 2, 5, 5], segmentation=wrong_size),        # kept, RLE of another size (masks only)
        _ann(11, 2, [3, 3, 5, 5], segmentation={"size": [32, 40], "counts": "zzzz"}),  # kept, runs != 32 * 40
    ]
    images = [(1, "a.png", (32, 40), (32, 40)), (2, "b.png", (32, 40), (32, 40)), (2, "b.png", (32, 40), None)]
    return _write_json(tmp_path, images, annotations), str(tmp_path)


EXPECTED_COUNTS = {"duplicate_image_id": 1, "unknown_image_id": 1, "malformed_bbox": 2, "unknown_category": 1,
                   "empty_box": 1, "beyond_max_instances": 1}


def test_problems_reported_once_with_counts(problems):
    path, image_dir = problems
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = coco_dataset(path, image_dir, (32, 40), max_instances=2, batch_size=2, training=False, mask_stride=4)
        images, targets = next(iter(ds))
    reports = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(reports) == 1  # one warning, at construction, none while iterating
    assert reports[0].message.counts == {**EXPECTED_COUNTS, "unusable_segmentation": 3}
    message = str(reports[0].message)
    for fragment in ("1 duplicate image id(s) in 'images' (the last entry is used), first: image 2;",
                     "first: image 77, annotation 5", "2 annotation(s) whose bbox is not 4 finite numbers",
                     "first: image 2, annotation 6 (bbox [1, 2, 3])", "first: image 1, annotation 4 (category_id 99)",
                     "first: image 2, annotation 8", "beyond max_instances=2 in their image (dropped), first: image 1, "
                     "annotation 3", "3 kept annotation(s) without a usable segmentation", "strict=True"):
        assert fragment in message
    # what is kept: image 1 anns 1, 2; image 2 anns 10, 11 (9 is a crowd); unusable segmentations give zero masks
    np.testing.assert_array_equal(targets["labels"].numpy(), [[0, 0], [0, 0]])
    np.testing.assert_allclose(targets["boxes"].numpy(), [[[0, 0, 10, 10], [5, 5, 15, 15]], [[2, 2, 7, 7], [3, 3, 8, 8]]])
    assert targets["masks"][0, 0].numpy().sum() > 0
    assert targets["masks"][0, 1].numpy().sum() == 0 and targets["masks"][1].numpy().sum() == 0
    # without masks the segmentations are not counted
    with pytest.warns(DataWarning) as record:
        coco_dataset(path, image_dir, (32, 40), max_instances=2, batch_size=2, training=False)
    assert record[0].message.counts == EXPECTED_COUNTS


def test_strict_raises_naming_the_first_offenders(problems):
    path, image_dir = problems
    with pytest.raises(ValueError, match=r"ann\.json'.*first: image 2;.*first: image 77, annotation 5.*strict=True"):
        coco_dataset(path, image_dir, (32, 40), 2, 1, False, mask_stride=4, strict=True)
    with pytest.raises(ValueError, match=r"segmentation \(all-zero mask\), first: image 1, annotation 2\. \(strict"):
        coco_dataset(path, image_dir, (32, 40), 2, 1, False, mask_stride=4, strict=True)


def test_strict_accepts_clean_data(shapes):
    path, image_dir = shapes
    assert check_annotations(load_coco(path), max_instances=4, with_masks=True, strict=True) == {}
    _, targets = next(iter(coco_dataset(path, image_dir, (32, 32), 4, 1, False, strict=True, num_classes=3)))
    assert targets["labels"].shape == (1, 4)


def test_num_classes_checks_class_ids(special):
    path, image_dir = special
    # categories 3 -> class 0, 7 -> class 1; ann 1 of image 1 has category 7
    with pytest.raises(ValueError, match=r"annotation 1 of image 1 has category_id 7, class id 1 .*num_classes=1 "
                                         r"allows class ids 0\.\.0"):
        coco_dataset(path, image_dir, (20, 30), 4, 1, False, num_classes=1)
    with pytest.warns(DataWarning):
        coco_dataset(path, image_dir, (20, 30), 4, 1, False, num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        coco_dataset(path, image_dir, (20, 30), 4, 1, False, num_classes=0)


def test_size_mismatch_names_the_file(tmp_path):
    # the json says 32x40 (height x width), the file is 30x40
    path = _write_json(tmp_path, [(1, "a.png", (32, 40), (32, 40)), (2, "small.png", (32, 40), (30, 40))],
                       [_ann(1, 2, [0, 0, 10, 10])])
    ds = coco_dataset(path, str(tmp_path), (32, 40), 2, 1, False, mask_stride=4)
    iterator = iter(ds)
    next(iterator)  # image 1 is fine
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"small\.png' \(image id 2\) is 40x30 \(width x height\) but '.*ann\.json' says 40x32"):
        next(iterator)


def _encoded(kind):
    image = Image.fromarray((np.arange(32 * 40 * 3).reshape(32, 40, 3) % 251).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format={"progressive": "JPEG"}.get(kind, kind), **({"progressive": True} if kind == "progressive" else {}))
    return buffer.getvalue()


BYTE_CASES = {
    "png": lambda: _encoded("PNG"),
    "png_trailing_bytes": lambda: _encoded("PNG") + b"extra",
    "png_half": lambda: _encoded("PNG")[: len(_encoded("PNG")) // 2],
    "png_without_iend": lambda: _encoded("PNG")[:-12],
    "jpeg": lambda: _encoded("JPEG"),
    "jpeg_trailing_bytes": lambda: _encoded("JPEG") + b"extra",
    "jpeg_without_eoi": lambda: _encoded("JPEG")[:-2],
    "progressive_cut": lambda: _encoded("progressive")[:-40],
    "gif": lambda: _encoded("GIF"),
    "bmp": lambda: _encoded("BMP"),
    "tiff": lambda: _encoded("TIFF"),
    "webp": lambda: _encoded("WEBP"),
    "text": lambda: b"not an image at all",
    "empty": lambda: b"",
}


@pytest.mark.parametrize("case", sorted(BYTE_CASES))
def test_check_image_bytes_agrees_with_tf_decode_image(case):
    encoded = BYTE_CASES[case]()
    try:
        decoded = tf.io.decode_image(encoded, channels=3, expand_animations=False).shape[:2]
    except tf.errors.InvalidArgumentError:
        decoded = None
    if decoded is None:
        with pytest.raises(ValueError, match="^the file (is not a JPEG|is a truncated)"):
            check_image_bytes(encoded, "the file")
    else:
        assert check_image_bytes(encoded, "the file") == tuple(decoded) == (32, 40)


@pytest.mark.parametrize("case", ["missing", "text", "png_half", "jpeg_without_eoi"])
def test_unreadable_image_files_are_named(tmp_path, case):
    file_name = "img.jpg" if "jpeg" in case else "img.png"
    path = _write_json(tmp_path, [(4, file_name, (32, 40), None)], [])
    if case != "missing":
        (tmp_path / file_name).write_bytes(BYTE_CASES[case]())
    expected = {"missing": "cannot be read: .*No such file", "text": "is not a JPEG, PNG, GIF, BMP or WebP image",
                "png_half": "is a truncated PNG", "jpeg_without_eoi": "is a truncated JPEG"}[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{file_name}' \(image id 4\) {expected}"):
        next(iter(coco_dataset(path, str(tmp_path), (32, 40), 2, 1, False)))


def test_bad_image_entries_and_annotation_keys(tmp_path):
    path = _write_json(tmp_path, [(1, "a.png", (32, 40), (32, 40))], [])
    data = json.loads(open(path).read())
    del data["images"][0]["height"]
    (tmp_path / "no_height.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"no_height\.json'.*image 1 needs .*positive integer 'height'"):
        coco_dataset(str(tmp_path / "no_height.json"), str(tmp_path), (32, 40), 2, 1, False)
    data = json.loads(open(path).read())
    data["annotations"] = [{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1]}]  # no category_id
    (tmp_path / "no_category.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"no_category\.json'.*'category_id'"):
        load_coco(str(tmp_path / "no_category.json"))


# ---- instance masks from polygons and RLEs, flipped with the image (issue 14) ----

def _column_major_runs(mask):
    """Uncompressed COCO RLE ``counts`` of a 0/1 mask, written out here: the run lengths of its
    pixels in column-major order, starting with a run of 0s (empty if the first pixel is 1)."""
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0] + runs if flat[0] else runs


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


@pytest.fixture()
def three_encodings(tmp_path):
    """One 30x45 (height x width) image with a polygon (a triangle, bbox its extent), an
    uncompressed RLE (an L, ``counts`` a list) and a compressed RLE (an ellipse, ``counts`` a
    string); none of them is left-right symmetric within the image."""
    height, width = 30, 45
    yy, xx = np.mgrid[:height, :width]
    ell = np.zeros((height, width), np.uint8)
    ell[14:28, 26:31] = 1
    ell[23:28, 26:42] = 1
    disk = (((xx - 36) / 7.0) ** 2 + ((yy - 7) / 5.0) ** 2 <= 1).astype(np.uint8)
    annotations = [
        _ann(1, 1, [3, 2, 18, 21], segmentation=[[3, 2, 21, 5, 9, 23]]),
        _ann(2, 1, _bbox(ell), category_id=7,
             segmentation={"size": [height, width], "counts": _column_major_runs(ell)}),
        _ann(3, 1, _bbox(disk), segmentation=_rle(disk)),
    ]
    path = _write_json(tmp_path, [(1, "one.png", (height, width), (height, width))], annotations)
    return path, str(tmp_path), {"ell": ell, "disk": disk}


@pytest.mark.parametrize("stride", [4, 2])
def test_polygon_and_rle_masks_with_and_without_flip_match_pycocotools(three_encodings, stride):
    """The masks on the stride grid against a NumPy reference of the module docstring's rule:
    pycocotools' ``annToMask`` at the original size, mirrored with NumPy when the example is
    flipped, resized to the stride-grid extent of the resized 32 x 48 image (``round(30 * 16/15
    / s)`` x ``round(45 * 16/15 / s)``: 8 x 12 at stride 4) with a NumPy bilinear resize
    (half-pixel centres, no antialiasing: ``numpy_resize_bilinear``), thresholded at 0.5,
    zero-padded to the 48 x 48 input's grid; the boxes scaled (and mirrored) with them, each
    mask inside its box."""
    from tests.models.instance_export import numpy_resize_bilinear

    path, image_dir, drawn = three_encodings
    coco = COCO(path)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert isinstance(anns[1]["segmentation"]["counts"], list) and isinstance(anns[2]["segmentation"]["counts"], str)
    np.testing.assert_array_equal(coco.annToMask(anns[1]), drawn["ell"])  # the hand-written runs decode right
    np.testing.assert_array_equal(coco.annToMask(anns[2]), drawn["disk"])
    height, width, rows = 30, 45, 4
    scale = min(48 / height, 48 / width)  # 16/15: the image becomes 32 x 48 in the 48 x 48 input
    grid, extent = 48 // stride, (round(height * scale / stride), round(width * scale / stride))

    def reference(flip):
        values, boxes = np.zeros((rows, grid, grid)), np.zeros((rows, 4))
        for i, ann in enumerate(anns):
            mask = coco.annToMask(ann).astype(np.float64)
            x, y, w, h = ann["bbox"]
            box = [x, y, x + w, y + h]
            if flip:
                mask, box = mask[:, ::-1], [width - box[2], box[1], width - box[0], box[3]]
            values[i, : extent[0], : extent[1]] = numpy_resize_bilinear(mask, *extent)
            boxes[i] = np.asarray(box) * scale
        return values, boxes

    def check(targets, flip):
        values, boxes = reference(flip)
        np.testing.assert_allclose(targets["boxes"], boxes, atol=1e-4)
        np.testing.assert_array_equal(targets["labels"], [0, 1, 0, -1])
        masks = targets["masks"]
        assert masks.shape == (rows, grid, grid) and masks.dtype == np.uint8
        away = np.abs(values - 0.5) > 1e-4  # float32 vs float64 exactly at the threshold may go either way
        assert away.mean() > 0.99
        np.testing.assert_array_equal(masks[away], (values >= 0.5)[away].astype(np.uint8))
        assert not masks[3].any() and not masks[:, extent[0]:].any()  # padding row, padding below the image
        for mask, (x1, y1, x2, y2) in zip(masks[:3], boxes[:3]):
            ys, xs = np.nonzero(mask)
            assert len(xs) >= 4
            # every mask cell [s*j, s*(j+1)) x [s*i, s*(i+1)) meets the box, and the box is no
            # more than two cells larger than the mask's cells on any side (the threshold loses
            # the triangle's thin tip)
            assert np.all((xs * stride < x2) & ((xs + 1) * stride > x1) & (ys * stride < y2) & ((ys + 1) * stride > y1))
            assert xs.min() * stride <= x1 + 2 * stride and (xs.max() + 1) * stride >= x2 - 2 * stride
            assert ys.min() * stride <= y1 + 2 * stride and (ys.max() + 1) * stride >= y2 - 2 * stride

    def numpy_targets(targets, b):
        return {k: targets[k][b].numpy() for k in ("boxes", "labels", "masks")}

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # all three segmentations are usable
        _, targets = next(iter(coco_dataset(path, image_dir, (48, 48), rows, 1, training=False, mask_stride=stride)))
        check(numpy_targets(targets, 0), flip=False)
        flipped = set()
        ds = coco_dataset(path, image_dir, (48, 48), rows, 1, training=True, mask_stride=stride, seed=0)
        for _, targets in ds.take(8):
            targets = numpy_targets(targets, 0)
            flip = bool(np.abs(targets["boxes"] - reference(True)[1]).max() < 1e-4)
            check(targets, flip)
            flipped.add(flip)
    assert flipped == {False, True}  # seed 0 flips some of the first 8 epochs and not others


@pytest.fixture(scope="module")
def one_rare_image(tmp_path_factory):
    # 20 images, 16 with annotations; class 3 is in one image (f = 1/16), classes 1 and 2 in over half
    out = tmp_path_factory.mktemp("rare")
    path = synthetic_shapes(
        str(out), num_images=20, image_size=(32, 32), num_classes=3, max_objects=3, class_weights=(1, 1, 0.06), seed=1
    )
    return path, str(out / "images")


def _image_id_counts(dataset, num_batches):
    ids = np.concatenate([t["image_info"]["image_id"].numpy() for _, t in dataset.take(num_batches)])
    return dict(zip(*np.unique(ids, return_counts=True))), len(ids)


def test_repeat_factor_sampling_shows_rare_images_more_often(one_rare_image):
    path, image_dir = one_rare_image
    data = json.load(open(path))
    annotated = {a["image_id"] for a in data["annotations"]}
    rare = {a["image_id"] for a in data["annotations"] if a["category_id"] == 3}
    assert len(annotated) == 16 and len(rare) == 1
    assert [c["image_count"] >= 8 for c in data["categories"]] == [True, True, False]
    # t = 0.5: r = sqrt(0.5 / (1/16)) = sqrt(8) for the rare image; the other classes have f >= 0.5, r = 1
    expected_share = 8 ** 0.5 / (19 + 8 ** 0.5)
    shares = {}
    for threshold in (None, 0.5):
        ds = coco_dataset(path, image_dir, (32, 32), max_instances=3, batch_size=10, training=True, shuffle_buffer=64,
                          seed=0, repeat_factor_threshold=threshold)
        counts, total = _image_id_counts(ds, 40)
        assert set(counts) == {img["id"] for img in data["images"]}
        shares[threshold] = sum(counts.get(i, 0) for i in rare) / total
    assert shares[None] == 1 / 20  # 400 images: exactly 20 epochs without repeats
    assert abs(shares[0.5] - expected_share) < 0.04 and shares[0.5] > 2 * shares[None]


def test_repeat_factor_threshold_needs_training_and_a_valid_threshold(one_rare_image):
    path, image_dir = one_rare_image
    with pytest.raises(ValueError, match="repeat_factor_threshold.*training"):
        coco_dataset(path, image_dir, (32, 32), 3, 2, training=False, repeat_factor_threshold=0.5)
    for bad in (0, 2.0, "0.5"):
        with pytest.raises(ValueError, match="repeat_factor_threshold"):
            coco_dataset(path, image_dir, (32, 32), 3, 2, training=True, repeat_factor_threshold=bad)

"""A deterministic synthetic COCO-format instance dataset of coloured shapes, written to disk.

``synthetic_shapes`` draws shapes (circle, square, triangle, ellipse, star, hexagon, cross,
pentagon) of random colour, rotation and size (from ``min_size`` ~8 px to about half the
image) on a smooth random background. Later shapes occlude earlier ones; each annotation
describes the *visible* part: objects that are not occluded get a polygon segmentation
(the exact vertices drawn), occluded ones or ones cut by the image border a compressed RLE
of their visible mask;
objects less than ``min_visible`` visible are not drawn at all. Boxes are ``[x, y, w, h]``
of the visible pixels, so boxes and masks agree with the image.

With ``long_tailed=True`` class frequencies follow a Zipf law ``p_k ~ 1 / (k + 1)^zipf_exponent``
(class 0 most frequent); ``class_weights`` sets them explicitly. Every category carries LVIS's
``image_count`` and ``frequency`` fields: ``"f"`` (frequent) when the class appears in more
than 20% of the images, ``"r"`` (rare) in at most 5% (at least in at most one image), ``"c"``
(common) otherwise (LVIS uses >100 and <=10 images of ~100k; we scale the thresholds to the
dataset size).

``LONG_TAILED_PROFILE`` are ``class_weights`` for ``num_classes=8`` that give 2 frequent, 3
common and 3 rare classes, the rare ones with a handful of images, as Equalization Loss
("Equalization Loss for Long-Tailed Object Recognition", J. Tan et al., arXiv 2003.05176)
needs. Measured with seeds 0-7 at 32x32 pixels: 300 images with ``max_objects=5`` always give
``f f c c c r r r`` (image counts 180-212 and 147-164 for the frequent classes, 21-49 for the
common ones, 2-11 for the rare ones, of at most 15 for "r"); so do 400 images with
``max_objects=6`` (rare: 3-14 images) and 200 with ``max_objects=4`` for seeds 1-7 (rare: 1-6
images; seed 0 puts the fifth class, with 9 images, in "r").

The same arguments and ``seed`` give byte-identical files.
"""

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from keras_cvx.validation import require_choice, require_positive_int, require_unit_interval

SHAPE_NAMES = ("circle", "square", "triangle", "ellipse", "star", "hexagon", "cross", "pentagon")

# relative class frequencies: 2 frequent, 3 common, 3 rare classes (see the module docstring)
LONG_TAILED_PROFILE = (1.0, 0.7, 0.13, 0.11, 0.095, 0.02, 0.016, 0.012)


def synthetic_shapes(
    output_dir,
    num_images=16,
    image_size=(128, 128),
    num_classes=5,
    max_objects=6,
    min_size=8,
    max_size=None,
    long_tailed=False,
    zipf_exponent=1.5,
    class_weights=None,
    min_visible=0.3,
    image_format="png",
    seed=0,
):
    """Writes ``output_dir/images/*.{png,jpg}`` and ``output_dir/annotations.json``.

    Args:
        output_dir: folder to write (created).
        num_images: number of images.
        image_size: ``(height, width)``.
        num_classes: how many of ``SHAPE_NAMES`` to use (1..8); category ids are 1..num_classes.
        max_objects: objects per image are drawn uniformly in ``0..max_objects``.
        min_size, max_size: object size range in pixels, sampled log-uniformly;
            ``max_size`` defaults to half the shorter image side.
        long_tailed: Zipf class frequencies instead of uniform ones.
        zipf_exponent: exponent of the Zipf law.
        class_weights: ``num_classes`` non-negative relative frequencies (at least one
            positive) with which each object's class is drawn, e.g. ``LONG_TAILED_PROFILE``
            (with ``num_classes=8``); recorded in the json's ``info``. Not together with
            ``long_tailed=True``.
        min_visible: objects with a smaller visible fraction are not drawn.
        image_format: ``"png"`` (lossless) or ``"jpg"``.
        seed: integer seed.

    Returns:
        The path of the annotations json.
    """
    require_positive_int("num_images", num_images)
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(v, int) and v >= 16 for v in image_size)
    ):
        raise ValueError(f"`image_size` must be a pair of integers >= 16, got {image_size!r}.")
    require_positive_int("num_classes", num_classes)
    if num_classes > len(SHAPE_NAMES):
        raise ValueError(f"`num_classes` must be at most {len(SHAPE_NAMES)}, got {num_classes!r}.")
    require_positive_int("max_objects", max_objects)
    require_positive_int("min_size", min_size)
    height, width = image_size
    if max_size is None:
        max_size = max(min_size, min(height, width) // 2)
    require_positive_int("max_size", max_size)
    if max_size < min_size:
        raise ValueError(f"`max_size` must be >= min_size ({min_size}), got {max_size!r}.")
    require_unit_interval("min_visible", min_visible)
    require_choice("image_format", image_format, {"png", "jpg"})

    if class_weights is not None:
        weights = _checked_class_weights(class_weights, num_classes, long_tailed)
    elif long_tailed:
        weights = 1.0 / np.arange(1, num_classes + 1) ** zipf_exponent
    else:
        weights = np.ones(num_classes)
    rng = np.random.default_rng(seed)
    class_probs = weights / weights.sum()

    image_dir = os.path.join(output_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    image_count = np.zeros(num_classes, np.int64)
    for index in range(num_images):
        image_id = index + 1
        file_name = f"{image_id:06d}.{image_format}"
        pixels, objects = _draw_image(rng, height, width, class_probs, max_objects, min_size, max_size, min_visible)
        if image_format == "png":
            Image.fromarray(pixels).save(os.path.join(image_dir, file_name), format="PNG")
        else:
            Image.fromarray(pixels).save(os.path.join(image_dir, file_name), format="JPEG", quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, obj))
        for class_index in {obj["class_index"] for obj in objects}:
            image_count[class_index] += 1

    categories = []
    for k in range(num_classes):
        count = int(image_count[k])
        if count > 0.2 * num_images:
            frequency = "f"
        elif count <= max(1, 0.05 * num_images):
            frequency = "r"
        else:
            frequency = "c"
        categories.append(
            {"id": k + 1, "name": SHAPE_NAMES[k], "supercategory": "shape",
             "image_count": count, "frequency": frequency}
        )
    info = {"description": "keras_cvx synthetic shapes", "seed": int(seed), "long_tailed": bool(long_tailed)}
    if class_weights is not None:
        info["class_weights"] = weights.tolist()
    dataset = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path = os.path.join(output_dir, "annotations.json")
    with open(path, "w") as f:
        json.dump(dataset, f)
    return path


def _checked_class_weights(class_weights, num_classes, long_tailed):
    """``class_weights`` as float64 ``[num_classes]``; a ``ValueError`` naming it unless they are
    ``num_classes`` finite non-negative numbers, not all zero, and ``long_tailed`` is off."""
    if long_tailed:
        raise ValueError(f"`class_weights` ({class_weights!r}) cannot be combined with `long_tailed=True`.")
    try:
        weights = np.asarray(class_weights, np.float64)
    except (TypeError, ValueError):
        weights = None
    valid = weights is not None and weights.shape == (num_classes,) and np.all(np.isfinite(weights))
    if not (valid and np.all(weights >= 0) and np.any(weights > 0)):
        raise ValueError(
            f"`class_weights` must be num_classes={num_classes} finite non-negative numbers, at least one positive, "
            f"got {class_weights!r}."
        )
    return weights


def _shape_polygon(name, cx, cy, size, angle, aspect):
    """Vertices ``[(x, y), ...]`` of shape ``name`` of extent ~``size`` pixels."""
    r = size / 2.0
    if name in ("circle", "ellipse"):
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        rx, ry = (r, r) if name == "circle" else (r, r * aspect)
        pts = np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)
    elif name == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    elif name == "cross":
        a, b = r, r / 3.0
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                        [-b, b], [-a, b], [-a, -b], [-b, -b]])
    else:
        sides = {"square": 4, "triangle": 3, "hexagon": 6, "pentagon": 5}[name]
        t = np.linspace(0, 2 * np.pi, sides, endpoint=False) + np.pi / sides
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    c, s = np.cos(angle), np.sin(angle)
    rotated = pts @ np.array([[c, s], [-s, c]])
    return [(float(cx + x), float(cy + y)) for x, y in rotated]


def _rasterize(polygon, height, width):
    """Rasterizes with pycocotools itself, so the pixels drawn equal ``annToMask`` of the polygon."""
    flat = [round(v, 2) for point in polygon for v in point]
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
    return mask_utils.decode(rle).astype(bool)


def _draw_image(rng, height, width, class_probs, max_objects, min_size, max_size, min_visible):
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    c0, c1 = rng.uniform(20, 110, size=(2, 3))
    background = c0 + (c1 - c0) * (0.5 * yy + 0.5 * xx)[..., None]
    background = background + rng.normal(0, 4, size=(height, width, 3))

    candidates = []
    for _ in range(int(rng.integers(0, max_objects + 1))):
        class_index = int(rng.choice(len(class_probs), p=class_probs))
        size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
        cx = rng.uniform(0, width)
        cy = rng.uniform(0, height)
        polygon = _shape_polygon(SHAPE_NAMES[class_index], cx, cy, size, rng.uniform(0, np.pi),
                                 rng.uniform(0.4, 0.8))
        colour = rng.uniform(130, 255, size=3)
        mask = _rasterize(polygon, height, width)
        if mask.sum() >= 4:
            candidates.append({"class_index": class_index, "polygon": polygon, "colour": colour, "mask": mask})

    # drop objects that end up hidden, last drawn on top; removing one only uncovers others
    kept = list(candidates)
    while True:
        visible = _visible_masks(kept)
        drop = [i for i, (obj, vis) in enumerate(zip(kept, visible)) if vis.sum() < min_visible * obj["mask"].sum()]
        if not drop:
            break
        kept = [obj for i, obj in enumerate(kept) if i != drop[0]]

    pixels = background
    for obj in kept:
        pixels = np.where(obj["mask"][..., None], obj["colour"], pixels)
    for obj, vis in zip(kept, _visible_masks(kept)):
        obj["visible"] = vis
        inside = all(0 <= x <= width and 0 <= y <= height for x, y in obj["polygon"])
        obj["use_rle"] = bool(vis.sum() < obj["mask"].sum()) or not inside
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8), kept


def _visible_masks(objects):
    covered = None
    visible = []
    for obj in reversed(objects):
        vis = obj["mask"] if covered is None else obj["mask"] & ~covered
        covered = obj["mask"] if covered is None else covered | obj["mask"]
        visible.append(vis)
    return visible[::-1]


def _annotation(annotation_id, image_id, obj):
    vis = obj["visible"]
    rows = np.flatnonzero(vis.any(axis=1))
    cols = np.flatnonzero(vis.any(axis=0))
    x, y = int(cols[0]), int(rows[0])
    w, h = int(cols[-1]) + 1 - x, int(rows[-1]) + 1 - y
    if obj["use_rle"]:
        rle = mask_utils.encode(np.asfortranarray(vis.astype(np.uint8)))
        segmentation = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    else:
        segmentation = [[round(v, 2) for point in obj["polygon"] for v in point]]
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": obj["class_index"] + 1,
        "bbox": [x, y, w, h],
        "area": int(vis.sum()),
        "segmentation": segmentation,
        "iscrowd": 0,
    }

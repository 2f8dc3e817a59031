"""Real photographs bundled with the package, with COCO-format instance annotations.

``coins_dataset()`` gives the paths of scikit-image's public-domain "Greek coins from
Pompeii" (``assets/coins/coins.png``, see ``assets/coins/ATTRIBUTION``) and of its
annotations: the 24 coins as category ``"coin"`` (id 1), RLE masks and ``[x, y, w, h]``
boxes. The annotations were computed once by ``segment_coins`` (scikit-image's classic
region-based pipeline: Sobel elevation map, watershed from dark/bright intensity markers,
hole filling, connected components, regions under ``min_area`` pixels dropped) and are
committed; ``segment_coins`` regenerates them (it needs scikit-image and SciPy).

``photos_dataset()`` gives two CC0 colour photographs from scikit-image
(``assets/photos/chelsea.png``, ``coffee.png``, see ``assets/photos/ATTRIBUTION``) with boxes
drawn by hand (no masks): categories ``eye`` (1), ``nose`` (2), ``cup`` (3), ``spoon`` (4),
``saucer`` (5); three instances per image, overlapping on the coffee photograph.
"""

import importlib.resources
import json
import os

import numpy as np
from pycocotools import mask as mask_utils

def _bundled(folder_name):
    folder = importlib.resources.files("keras_cvx.data") / "assets" / folder_name
    return str(folder / "annotations.json"), str(folder)


def coins_dataset():
    """``(annotation_file, image_dir)`` of the bundled coins image, for ``coco_dataset``."""
    return _bundled("coins")


def photos_dataset():
    """``(annotation_file, image_dir)`` of the two bundled colour photographs, for ``coco_dataset``."""
    return _bundled("photos")


def segment_coins(image, min_area=100):
    """COCO dataset dict of the coins in the uint8 grayscale ``image`` ``[H, W]``."""
    from scipy import ndimage
    from skimage import filters, segmentation

    image = np.asarray(image)
    elevation = filters.sobel(image)
    markers = np.zeros_like(image)
    markers[image < 30] = 1
    markers[image > 150] = 2
    foreground = ndimage.binary_fill_holes(segmentation.watershed(elevation, markers) == 2)
    labelled, count = ndimage.label(foreground)
    annotations = []
    for index in range(1, count + 1):
        mask = labelled == index
        if mask.sum() < min_area:
            continue
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [x, y, w, h],
                "area": int(mask.sum()),
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "iscrowd": 0,
            }
        )
    height, width = image.shape
    return {
        "info": {"description": "coins.png from scikit-image, segmented by keras_cvx.data.real_images.segment_coins"},
        "images": [{"id": 1, "file_name": "coins.png", "height": int(height), "width": int(width)}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "coin", "supercategory": "object"}],
    }


def write_coins_annotations(path):
    """Regenerates the bundled annotations json from the bundled image."""
    from PIL import Image

    image = np.asarray(Image.open(os.path.join(coins_dataset()[1], "coins.png")))
    with open(path, "w") as f:
        json.dump(segment_coins(image), f)

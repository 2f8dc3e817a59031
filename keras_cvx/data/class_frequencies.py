"""Image-level class frequencies and LVIS frequency groups from a COCO-format annotation file.

Used by Equalization Loss ("Equalization Loss for Long-Tailed Object Recognition", J. Tan et
al., CVPR 2020, arXiv 2003.05176, §3.2; the official ``tztztztztz/eql.detectron2`` stores LVIS's
``image_count`` divided by the number of images):

    f_j = #{training images with >= 1 annotation of class j} / N_img

where N_img counts the distinct images that have at least one annotation (images without any
annotation are not in the denominator; LVIS's ``image_count`` / 56,740 on v0.5). Groups follow
LVIS: rare = at most ``rare_max_images`` (10) images, common = up to ``common_max_images``
(100), frequent = more. Classes are ordered by ascending category id (the contiguous label
order of ``keras_cvx.data.coco``); a category without annotations has f = 0 and is rare.
"""

import json

import numpy as np

from keras_cvx.validation import require_positive_int


def class_frequencies(coco_annotation_file, rare_max_images=10, common_max_images=100):
    """Class frequencies of ``coco_annotation_file`` (a COCO json path or the loaded dict).

    Returns a dict with NumPy arrays ordered by category id:

    * ``category_ids`` [C] int, ``image_counts`` [C] int, ``frequencies`` [C] float64 (f_j),
    * ``groups`` [C] str in {"r", "c", "f"}, and ``num_images`` (N_img).
    """
    require_positive_int("rare_max_images", rare_max_images)
    require_positive_int("common_max_images", common_max_images)
    if common_max_images < rare_max_images:
        raise ValueError(
            f"`common_max_images` ({common_max_images}) must be >= `rare_max_images` ({rare_max_images})."
        )
    if isinstance(coco_annotation_file, dict):
        data = coco_annotation_file
    else:
        with open(coco_annotation_file) as f:
            data = json.load(f)
    category_ids = np.array(sorted(c["id"] for c in data.get("categories", [])), dtype=np.int64)
    index = {int(c): i for i, c in enumerate(category_ids)}
    images_per_class = [set() for _ in category_ids]
    annotated_images = set()
    for ann in data.get("annotations", []):
        if ann["category_id"] not in index:
            raise ValueError(
                f"`coco_annotation_file` {coco_annotation_file}: annotation {ann.get('id')} has unknown "
                f"category_id {ann['category_id']}."
            )
        images_per_class[index[ann["category_id"]]].add(ann["image_id"])
        annotated_images.add(ann["image_id"])
    image_counts = np.array([len(s) for s in images_per_class], dtype=np.int64)
    num_images = len(annotated_images)
    frequencies = image_counts / max(num_images, 1)
    groups = np.where(image_counts <= rare_max_images, "r", np.where(image_counts <= common_max_images, "c", "f"))
    return {
        "category_ids": category_ids,
        "image_counts": image_counts,
        "frequencies": frequencies,
        "groups": groups,
        "num_images": num_images,
    }

"""Data flags shared by the detection examples (``examples/train_ssd_net.py``,
``examples/train_condinst.py``): COCO json + image folder or Model Garden TFRecords, and
otherwise the bundled synthetic shapes (``keras_cvx.data.shapes``) written once to a cache.

``add_data_arguments(parser)`` adds the ``data`` group::

    --train-json, --images, --val-json, --val-images, --train-tfrecord, --max-instances,
    --synthetic-dir, --synthetic-train-images, --synthetic-val-images

``check_data_arguments(parser, args)`` rejects inconsistent combinations with
``parser.error``, ``data_paths(args)`` gives ``(train_json, train_images, val_json,
val_images)``: the real data's, or the synthetic training (seed 0) and validation (seed 1)
sets, written under ``--synthetic-dir`` the first time they are asked for, and
``dataset_classes(val_json)`` the validation set's COCO object, model-class map and names.

Example:

>>> import argparse
>>> from keras_cvx.data.cli import add_data_arguments, check_data_arguments, data_paths
>>> parser = argparse.ArgumentParser()
>>> group = add_data_arguments(parser, max_instances=16)
>>> args = parser.parse_args(["--train-json", "t.json", "--images", "d", "--val-json", "v.json"])
>>> check_data_arguments(parser, args)
>>> data_paths(args)
('t.json', 'd', 'v.json', 'd')
"""

import hashlib
import os
import tempfile

from keras_cvx.data.coco import class_id_map, load_coco
from keras_cvx.data.shapes import synthetic_shapes


def add_data_arguments(parser, max_instances=32, instances="ground-truth boxes", masks=False):
    """Adds the ``data`` argument group to ``parser`` and returns it (for more flags).

    Args:
        parser: an ``argparse.ArgumentParser``.
        max_instances: default of ``--max-instances`` (ground truth per image, padded).
        instances: what ``--max-instances`` counts, for its help text.
        masks: say in the help texts that the data must carry instance masks.
    """
    with_masks = " (with segmentations)" if masks else ""
    data = parser.add_argument_group("data")
    data.add_argument("--train-json", help=f"COCO instances json of the training set{with_masks}")
    data.add_argument("--val-json", help="COCO instances json of the validation set")
    data.add_argument("--images", help="image folder of --train-json")
    data.add_argument("--val-images", help="image folder of --val-json (default: --images)")
    data.add_argument("--train-tfrecord", help=f"glob of Model Garden TFRecords{' with masks' if masks else ''} "
                                               "(instead of --train-json/--images)")
    data.add_argument("--max-instances", type=int, default=max_instances, help=f"{instances} per image (padded)")
    data.add_argument("--strict-data", action="store_true",
                      help="stop on any data problem (unknown ids, malformed or dropped boxes) instead of one warning")
    data.add_argument("--synthetic-dir", default=os.path.join(tempfile.gettempdir(), "keras_cvx_shapes"),
                      help="cache folder of the synthetic dataset (used without --train-json/--train-tfrecord)")
    data.add_argument("--synthetic-train-images", type=int, default=800)
    data.add_argument("--synthetic-val-images", type=int, default=100)
    return data


def check_data_arguments(parser, args):
    """``parser.error`` (exit status 2) unless the data flags name one complete source."""
    if bool(args.train_json) == bool(args.train_tfrecord) and (args.train_json or args.train_tfrecord):
        parser.error("give either --train-json/--images or --train-tfrecord")
    if args.train_json and not args.images:
        parser.error("--train-json needs --images")
    if (args.train_json or args.train_tfrecord) and not (args.val_json and (args.val_images or args.images)):
        parser.error("real data needs --val-json and its image folder (--val-images or --images)")


def _folder_suffix(options):
    """A folder-name suffix that tells ``synthetic_shapes`` option sets apart."""
    text = "".join(f"_{options[k]}" for k in sorted(options))
    if all(c.isalnum() or c in "_.-" for c in text):
        return text
    return "_" + hashlib.sha1(repr(sorted(options.items())).encode()).hexdigest()[:10]


def data_paths(args, train_options=None, **shape_options):
    """``(train_json, train_images, val_json, val_images)`` of the flags' data.

    Without ``--train-json``/``--train-tfrecord``: ``synthetic_shapes`` sets of
    ``args.image_size`` square images (``--synthetic-train-images`` with seed 0,
    ``--synthetic-val-images`` with seed 1, at most 6 objects per image, ``shape_options``
    passed on, e.g. ``num_classes`` or ``min_size``, and ``train_options`` for the training set
    only, e.g. a long-tailed ``class_weights``), written once under ``--synthetic-dir`` in a
    folder named by these settings. ``train_json`` is ``None`` with ``--train-tfrecord``.
    """
    if args.train_json or args.train_tfrecord:
        return args.train_json, args.images, args.val_json, args.val_images or args.images
    paths = []
    splits = (("train", args.synthetic_train_images, 0, dict(shape_options, **(train_options or {}))),
              ("val", args.synthetic_val_images, 1, shape_options))
    for split, count, seed, options in splits:
        folder = os.path.join(args.synthetic_dir, f"{split}_{count}_{args.image_size}{_folder_suffix(options)}_{seed}")
        annotations = os.path.join(folder, "annotations.json")
        if not os.path.exists(annotations):
            synthetic_shapes(folder, num_images=count, image_size=(args.image_size, args.image_size), max_objects=6,
                             seed=seed, **options)
        paths += [annotations, os.path.join(folder, "images")]
    return tuple(paths)


def dataset_classes(annotation_file):
    """``(coco, classes, class_names)``: the pycocotools ``COCO`` of ``annotation_file``, its
    ``class_id_map`` (model class index -> category id) and the category names in model-class order."""
    coco = load_coco(annotation_file)
    classes = class_id_map(coco)
    return coco, classes, [coco.cats[classes[k]]["name"] for k in sorted(classes)]

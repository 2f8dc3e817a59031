"""Train CondInst (arXiv 2003.05664) for instance segmentation, evaluate box and mask AP with
COCOeval, draw the predicted masks, evaluate on a real photograph and export a SavedModel
with masks for TF Serving.

With no arguments it writes the bundled synthetic shapes dataset (``keras_cvx.data.shapes``)
to a cache folder and trains a small CondInst (ResNet-10 at a quarter width, 64-channel FPN
and heads, 128x128 input) on 2 CPU cores::

    python examples/train_condinst.py

The run prints the COCO bbox and segm numbers of the synthetic validation images, writes
``--png`` (validation images with their masks, boxes and scores;
``saved_models/condinst/predictions.png``), evaluates the model on the bundled photograph of
24 Greek coins (``keras_cvx.data.coins_dataset``; class-agnostic: every detection counts as
a coin) and draws it (``--coins-png``), and exports to ``<export-dir>/<version>``
(``saved_models/condinst/1``; ``--export-dir ''`` skips it) with ``detection_masks`` at the
original image resolution; ``--onnx`` also writes ``<export-dir>/model.onnx`` with the same
input and outputs, masks included (``keras_cvx.export.export_onnx``; the ``[onnx]`` extra).

On COCO-format data with instance masks (json + image folder, or Model Garden TFRecords with
``image/object/mask``)::

    python examples/train_condinst.py --train-json train.json --images imgs/ --val-json val.json \\
        --backbone resnet50 --width 1 --image-size 800 --fpn-channels 256 --head-channels 256 \\
        --mask-branch-channels 128 --batch-size 16 --steps 90000 --optimizer sgd --schedule step \\
        --learning-rate 0.01 --weight-decay 1e-4 --warmup-steps 1000 --max-instances 100
    python examples/train_condinst.py --train-tfrecord 'train-*.tfrecord' --val-json val.json --val-images d/

(the second line of flags is AdelaiDet's ``MS_R_50_1x`` schedule without its multi-scale
resize and ImageNet weights). Every flag of ``keras_cvx.training.cli`` works
(``--strategy mirrored``, ``--mixed-precision``, ``--model-dir`` with resume, ...).
"""

import sys

from keras_cvx.heads.condinst import CondInstMaskBranch
from keras_cvx.heads.fcos import FCOSHead
from keras_cvx.layers.fcos_decoder import FCOSDecoder
from keras_cvx.models.condinst import CondInst
from keras_cvx.models.necks.fpn import FeaturePyramid
from keras_cvx.training.cli import make_parser
from keras_cvx.training.instance_segmentation import (
    add_instance_segmentation_arguments,
    check_instance_segmentation_arguments,
    train_instance_segmentation,
)

MASK_STRIDE = 4
"""Ground-truth masks on the stride-4 grid (CondInst's mask output stride)."""


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser(
        __doc__.splitlines()[0], batch_size=8, steps=2000, learning_rate=0.002, optimizer="adamw",
        warmup_steps=100, weight_decay=1e-4, log_every=25, checkpoint_every=500, clipnorm=10.0,
    )
    model = add_instance_segmentation_arguments(parser, "condinst")
    model.add_argument("--mask-branch-channels", type=int, default=32, help="(paper: 128)")
    model.add_argument("--semantic-loss", action="store_true", help="add the auxiliary semantic loss")
    args = parser.parse_args(argv)
    check_instance_segmentation_arguments(parser, args)
    return args


def build_condinst(args, num_classes):
    """The CondInst of the flags (paper sizes with ``--fpn-channels 256 --head-convs 4 --groups 32
    --mask-branch-channels 128``)."""
    return CondInst(
        num_classes, image_size=args.image_size, backbone=args.backbone, width_multiplier=args.width,
        neck=FeaturePyramid(args.fpn_channels),
        head=FCOSHead(num_classes, num_convs=args.head_convs, groups=args.groups, return_box_features=True),
        mask_branch=CondInstMaskBranch(args.mask_branch_channels), decoder=FCOSDecoder(),
        semantic_loss=args.semantic_loss, max_proposals=args.max_proposals, seed=args.seed,
    )


def main(argv=None):
    args = parse_args(argv)
    return train_instance_segmentation(
        args, lambda num_classes: build_condinst(args, num_classes), MASK_STRIDE,
        lambda model: (f"CondInst({args.backbone} x{args.width}, {args.image_size}px, FPN {args.fpn_channels}): "
                       f"{model.count_params():,} parameters, {model.num_locations} locations"))


if __name__ == "__main__":
    main()

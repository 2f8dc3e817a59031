"""Train PointINS (arXiv 2003.06148; instance-aware convolution on FCOS or RetinaNet) for
instance segmentation, evaluate box and mask AP with COCOeval, draw the predicted masks,
evaluate on a real photograph and export a SavedModel with masks for TF Serving.

With no arguments it writes the bundled synthetic shapes dataset (``keras_cvx.data.shapes``)
to a cache folder and trains a small PointINS on FCOS (ResNet-10 at a quarter width, 64-channel
FPN and heads, 128x128 input; the data, backbone and training budget of
``examples/train_condinst.py``, so the two compare) on 2 CPU cores::

    python examples/train_pointins.py
    python examples/train_pointins.py --detector retinanet      # A = 9 anchors per location

The run prints the COCO bbox and segm numbers of the synthetic validation images, writes
``--png`` (``saved_models/pointins/predictions.png``), evaluates on the bundled photograph of
24 Greek coins (class-agnostic) and draws it (``--coins-png``), and exports to
``<export-dir>/<version>`` (``saved_models/pointins/1``; ``--export-dir ''`` skips it) with
``detection_masks`` at the original image resolution.

The paper's sizes (inferred: no code was released; see ``keras_cvx.models.pointins``) are
``--fpn-channels 256 --head-convs 4 --groups 32 --template-channels 256 --mask-head-channels 256``.
On COCO-format data with instance masks (json + image folder, or Model Garden TFRecords)::

    python examples/train_pointins.py --train-json train.json --images imgs/ --val-json val.json \\
        --backbone resnet50 --width 1 --image-size 800 --fpn-channels 256 --head-convs 4 --groups 32 \\
        --template-channels 256 --mask-head-channels 256 --batch-size 16 --steps 90000 --optimizer sgd \\
        --schedule step --learning-rate 0.01 --weight-decay 1e-4 --warmup-steps 1000 --max-instances 100

Every flag of ``keras_cvx.training.cli`` works (``--strategy mirrored``, ``--mixed-precision``,
``--model-dir`` with resume, ...).
"""

import sys

from keras_cvx.heads.fcos import FCOSHead
from keras_cvx.heads.pointins import PointINSMaskHead
from keras_cvx.heads.retinanet import RetinaNetHead
from keras_cvx.layers.instance_aware_conv import WEIGHT_TYPES, InstanceAwareConv
from keras_cvx.models.necks.fpn import FeaturePyramid
from keras_cvx.models.pointins import DETECTORS, PointINS
from keras_cvx.training.cli import make_parser
from keras_cvx.training.instance_segmentation import (
    add_instance_segmentation_arguments,
    check_instance_segmentation_arguments,
    train_instance_segmentation,
)

ANCHORS_PER_LOCATION = 9
"""RetinaNet's anchors per location (3 scales x 3 ratios)."""


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser(
        __doc__.splitlines()[0], batch_size=8, steps=2000, learning_rate=0.002, optimizer="adamw",
        warmup_steps=100, weight_decay=1e-4, log_every=25, checkpoint_every=500, clipnorm=10.0,
    )
    model = add_instance_segmentation_arguments(parser, "pointins")
    model.set_defaults(max_proposals=128)
    model.add_argument("--detector", choices=DETECTORS, default="fcos")
    model.add_argument("--template-size", type=int, default=3, help="k of the k x k template (inferred: 3)")
    model.add_argument("--template-channels", type=int, default=None, help="C of the template (= --fpn-channels; "
                       "inferred: 256)")
    model.add_argument("--weight-type", choices=WEIGHT_TYPES, default="depthwise")
    model.add_argument("--mask-head-channels", type=int, default=32, help="(inferred: 256)")
    model.add_argument("--mask-stride", type=int, default=4, help="stride of the ground-truth masks")
    args = parser.parse_args(argv)
    check_instance_segmentation_arguments(parser, args)
    if args.image_size % args.mask_stride:
        parser.error("--mask-stride must divide --image-size")
    return args


def build_pointins(args, num_classes):
    """The PointINS of the flags."""
    fcos = args.detector == "fcos"
    weight_sets = 1 if fcos else ANCHORS_PER_LOCATION
    head = (FCOSHead(num_classes, num_convs=args.head_convs, groups=args.groups, return_box_features=True) if fcos
            else RetinaNetHead(num_classes, weight_sets, num_convs=args.head_convs, return_box_features=True))
    template_channels = args.template_channels or args.fpn_channels
    full = args.weight_type == "full"
    return PointINS(
        num_classes, image_size=args.image_size, backbone=args.backbone, width_multiplier=args.width,
        detector=args.detector, neck=FeaturePyramid(args.fpn_channels), head=head,
        instance_conv=InstanceAwareConv(args.template_size, template_channels, weight_sets, args.weight_type,
                                        output_channels=template_channels if full else None),
        mask_head=PointINSMaskHead(channels=args.mask_head_channels), max_proposals=args.max_proposals,
        mask_stride=args.mask_stride, seed=args.seed,
    )


def main(argv=None):
    args = parse_args(argv)
    return train_instance_segmentation(
        args, lambda num_classes: build_pointins(args, num_classes), args.mask_stride,
        lambda model: (f"PointINS on {args.detector} ({args.backbone} x{args.width}, {args.image_size}px, FPN "
                       f"{args.fpn_channels}): {model.count_params():,} parameters, {model.num_predictions} "
                       f"potential instances per image"))


if __name__ == "__main__":
    main()

"""PointINS vs CondInst on the same backbone, image size and number of detections: predict
time (XLA-compiled, batch 1), and the cost of the masks as the number of detections grows
(10, 100, 300), under the TensorFlow or the JAX backend (the JAX run needs no TensorFlow).
Everything is measured in one run (interleaved rounds, median) and printed with the ratios.

All models share one ResNet-50 backbone, FPN and FCOS head (same weights); the decoder keeps
``D`` detections (static slots: every slot costs the same, found or not). "FCOS alone" is that
detector without masks; a model's mask cost is its predict time minus FCOS alone's:

* CondInst (arXiv 2003.05664): the controller over all locations, the mask branch on P3-P5,
  the dynamic heads of the D detections at stride 4 and their up-sampling to the full image;
* PointINS (arXiv 2003.06148): the instance-aware convolution at the D detections' points
  only, the 28x28 mask head of each, and pasting into the boxes of the full image.

    KERAS_BACKEND=tensorflow python benchmarks/pointins.py [--rounds 3] [--runs 2] [--size 800]
    KERAS_BACKEND=jax python benchmarks/pointins.py
"""

import argparse

import keras
import numpy as np
from condinst import fcos_alone  # benchmarks/condinst.py (this script's folder is on sys.path)
from timing import compiled, measure

from keras_cvx.heads.condinst import CondInstController, CondInstMaskBranch
from keras_cvx.heads.fcos import FCOSHead
from keras_cvx.heads.pointins import PointINSMaskHead
from keras_cvx.layers.dynamic_mask_head import DynamicMaskHead
from keras_cvx.layers.fcos_decoder import FCOSDecoder
from keras_cvx.layers.instance_aware_conv import InstanceAwareConv
from keras_cvx.models.condinst import CondInst
from keras_cvx.models.detector_parts import detector_backbone
from keras_cvx.models.necks.fpn import FeaturePyramid
from keras_cvx.models.pointins import PointINS

NUM_CLASSES = 80
DETECTIONS = (10, 100, 300)


def make_models(size, detections):
    """``{(name, D): model}`` sharing one backbone, FPN and FCOS head, and each family's mask
    parts, over the numbers of detections ``D``."""
    keras.utils.set_random_seed(0)
    backbone, _ = detector_backbone("resnet50", (size, size), 1.0, ("C3", "C4", "C5"))
    neck, head = FeaturePyramid(), FCOSHead(NUM_CLASSES, return_box_features=True)
    condinst_parts = dict(controller=CondInstController(), mask_branch=CondInstMaskBranch(),
                          mask_head=DynamicMaskHead())
    pointins_parts = dict(instance_conv=InstanceAwareConv(), mask_head=PointINSMaskHead())
    models = {}
    for d in detections:
        shared = dict(image_size=size, backbone=backbone, neck=neck, head=head,
                      decoder=FCOSDecoder(score_threshold=0.0, max_detections=d))
        models[("CondInst", d)] = CondInst(NUM_CLASSES, **shared, **condinst_parts)
        models[("PointINS", d)] = PointINS(NUM_CLASSES, **shared, **pointins_parts)
    return models


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--runs", type=int, default=2, help="calls per measurement")
    parser.add_argument("--size", type=int, default=800, help="square input (a multiple of 32)")
    parser.add_argument("--detections", type=int, nargs="+", default=list(DETECTIONS))
    args = parser.parse_args()
    models = make_models(args.size, args.detections)
    reference = models[("CondInst", args.detections[0])]
    images = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)).astype("float32")
    jobs = {("FCOS alone", 0): compiled(fcos_alone(reference), reference)}
    jobs.update({key: compiled(model.predict_step, model) for key, model in models.items()})
    detector = _detector_params(reference)
    condinst_masks = models[("CondInst", args.detections[0])].count_params() - detector
    pointins_masks = models[("PointINS", args.detections[0])].count_params() - detector
    print(f"backend {keras.backend.backend()}; ResNet-50 FPN, {NUM_CLASSES} classes, {args.size}x{args.size}, "
          f"batch 1, XLA; parameters: detector {detector:,}, CondInst's mask parts {condinst_masks:,}, "
          f"PointINS's {pointins_masks:,}")
    first_call, median = measure({key: (lambda f=f: f(images)) for key, f in jobs.items()}, args.rounds, args.runs)

    base = median[("FCOS alone", 0)]
    print(f"\n({args.rounds} rounds x {args.runs} runs, median; first calls include compilation)")
    print(f"FCOS alone (no masks): {base * 1e3:.1f} ms (first call {first_call[('FCOS alone', 0)]:.1f} s)")
    print(f"{'detections':>10} {'CondInst ms':>12} {'PointINS ms':>12} {'PointINS/CondInst':>18} "
          f"{'CondInst mask ms':>17} {'PointINS mask ms':>17}")
    for d in args.detections:
        condinst, pointins = median[("CondInst", d)], median[("PointINS", d)]
        print(f"{d:>10} {condinst * 1e3:>12.1f} {pointins * 1e3:>12.1f} {pointins / condinst:>18.3f} "
              f"{(condinst - base) * 1e3:>17.1f} {(pointins - base) * 1e3:>17.1f}")


def _detector_params(model):
    return sum(part.count_params() for part in (model.backbone, model.neck, model.head))


if __name__ == "__main__":
    main()

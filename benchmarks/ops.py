"""Speed of ``keras_cvx.ops.non_max_suppression`` and ``keras_cvx.ops.roi_align`` against
the ``tf.image`` ops, with and without XLA, measured in one run (TensorFlow backend).

* NMS: ``N`` clustered boxes, ``K`` outputs, IoU 0.5: ours in ``tf.function`` with and without
  ``jit_compile`` vs ``tf.image.non_max_suppression`` in ``tf.function`` (its kernel cannot be
  XLA-compiled with a dynamic output, so it runs without XLA).
* RoIAlign: ``R`` boxes on a ``[1, S, S, C]`` map, 7x7 output, sampling ratio 2: ours vs
  ``tf.image.crop_and_resize`` to 14x14 followed by 2x2 average pooling (the usual TF
  approximation of RoIAlign with 2x2 samples; ``CropAndResize`` has no XLA kernel, so it runs
  without XLA only), ours with and without XLA.

Prints the median time per call over interleaved rounds and ratios against the tf.image op.

    KERAS_BACKEND=tensorflow python benchmarks/ops.py [--boxes 1000] [--rois 256] [--rounds 5]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_cvx.ops.nms import non_max_suppression  # noqa: E402
from keras_cvx.ops.roi_align import roi_align  # noqa: E402


def _time(fn, args, repeats):
    fn(*args)  # trace/compile
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    tf.nest.map_structure(lambda t: t.numpy(), out)
    return (time.perf_counter() - start) / repeats


def _measure(candidates, args, repeats, rounds):
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            times[name].append(_time(fn, args, repeats))
    return {name: statistics.median(t) for name, t in times.items()}


def _report(title, medians, baseline):
    print(f"\n{title}")
    for name, seconds in medians.items():
        print(f"  {name:<34s} {seconds * 1e3:9.3f} ms   x{medians[baseline] / seconds:6.2f} vs {baseline}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--max-output", type=int, default=100)
    parser.add_argument("--rois", type=int, default=256)
    parser.add_argument("--size", type=int, default=50)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    centres = rng.uniform(0, 800, (args.boxes // 10 + 1, 2))[rng.integers(0, args.boxes // 10 + 1, args.boxes)]
    centres = centres + rng.normal(0, 10, (args.boxes, 2))
    wh = rng.uniform(10, 100, (args.boxes, 2))
    boxes = tf.constant(np.concatenate([centres - wh / 2, centres + wh / 2], -1), tf.float32)
    scores = tf.constant(rng.permutation(args.boxes) / args.boxes, tf.float32)
    k = args.max_output

    def ours(b, s):
        return non_max_suppression(b, s, k, 0.5)

    def reference(b, s):
        return tf.image.non_max_suppression(tf.gather(b, [1, 0, 3, 2], axis=1), s, k, 0.5)

    nms = {
        "tf.image.non_max_suppression": tf.function(reference),
        "ours, tf.function": tf.function(ours),
        "ours, tf.function(jit_compile=True)": tf.function(ours, jit_compile=True),
    }
    medians = _measure(nms, (boxes, scores), args.repeats, args.rounds)
    _report(f"NMS: {args.boxes} boxes, {k} outputs, IoU 0.5", medians, "tf.image.non_max_suppression")

    size, stride = args.size, 16.0
    features = tf.constant(rng.normal(size=(1, size, size, args.channels)), tf.float32)
    xy = rng.uniform(0, size * stride * 0.8, (1, args.rois, 2))
    rois = tf.constant(np.concatenate([xy, xy + rng.uniform(16, 200, (1, args.rois, 2))], -1), tf.float32)

    def ours_roi(f, r):
        return roi_align(f, r, 7, 1.0 / stride, sampling_ratio=2, aligned=True)

    def reference_roi(f, r):
        scale = stride * (size - 1)  # crop_and_resize takes boxes normalised to pixel centres
        r = r[0]
        normalised = tf.stack([r[:, 1] - stride / 2, r[:, 0] - stride / 2, r[:, 3] - stride / 2, r[:, 2] - stride / 2], -1) / scale
        crops = tf.image.crop_and_resize(f, normalised, tf.zeros(args.rois, tf.int32), (14, 14))
        return tf.nn.avg_pool2d(crops, 2, 2, "VALID")

    roi = {
        "tf.image.crop_and_resize + pool": tf.function(reference_roi),
        "ours, tf.function": tf.function(ours_roi),
        "ours, tf.function(jit_compile=True)": tf.function(ours_roi, jit_compile=True),
    }
    medians = _measure(roi, (features, rois), args.repeats, args.rounds)
    _report(f"RoIAlign: {args.rois} boxes on [1, {size}, {size}, {args.channels}], 7x7, ratio 2", medians,
            "tf.image.crop_and_resize + pool")


if __name__ == "__main__":
    main()

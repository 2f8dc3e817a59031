"""Speed of ``keras_cvx.ops`` NMS, RoIAlign and multi-level RoIAlign against reference
kernels measured in the same run, under the TensorFlow or the JAX backend.

* ``KERAS_BACKEND=tensorflow``: ours compiled with ``tf.function(jit_compile=True)`` against
  ``tf.image.non_max_suppression`` (``tf.function``; its kernel has no XLA version) and
  ``tf.image.crop_and_resize`` to ``(out g) x (out g)`` points followed by ``g x g`` average
  pooling, with crop boxes chosen so that its sample points are exactly RoIAlign's (boxes
  inside the map, where both give the same numbers; checked before timing).
* ``KERAS_BACKEND=jax``: ours under ``jax.jit``, without TensorFlow (it is never imported),
  against ``torchvision.ops.nms`` / ``torchvision.ops.roi_align`` on the same inputs when
  torchvision is importable (on the GPU when ours runs on one).

Sizes: NMS of 1k / 5k / 20k clustered boxes to 100 / 300 / 1,000 outputs (IoU 0.5); RoIAlign
7x7, sampling ratio 2, of 512 and 2,000 RoIs on a ``[2, 200, 200, 256]`` map (the stride-4
level of an 800x800 image), forward and forward+backward; multi-level RoIAlign of 512 RoIs on
an 800x800 ResNet-FPN pyramid P2-P5 (``[2, 200/100/50/25, ., 256]``) against one
single-level pass of the same boxes on P2 and against the previous method (one pass per level).
Prints the median time per call over interleaved rounds and ratios (``x > 1``: ours faster).

    KERAS_BACKEND=tensorflow python benchmarks/ops.py [--quick] [--rounds 5] [--repeats 3]
    KERAS_BACKEND=jax python benchmarks/ops.py
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_cvx.ops.nms import non_max_suppression  # noqa: E402
from keras_cvx.ops.roi_align import fpn_level, multilevel_roi_align, roi_align  # noqa: E402

BACKEND = keras.backend.backend()
OUT, GRID = 7, 2


def _compile(fn):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    raise SystemExit(f"no compiler wired for backend {BACKEND!r}")


def _sync(outputs):
    for t in keras.tree.flatten(outputs):
        if hasattr(t, "block_until_ready"):
            t.block_until_ready()
        elif hasattr(t, "cpu"):  # torch
            t.cpu()
        else:
            np.asarray(t)


def _gradient(fn):
    """``features, boxes, cotangent -> d sum(fn(features, boxes) * cotangent) / d features``: the
    backward pass with a given upstream gradient, in the backend's way."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def grad(features, boxes, cotangent):
            with tf.GradientTape() as tape:
                tape.watch(features)
                loss = tf.reduce_sum(fn(features, boxes) * cotangent)
            return tape.gradient(loss, features)

        return grad
    import jax

    return jax.grad(lambda f, b, c: jax.numpy.sum(fn(f, b) * c))


def _measure(candidates, args, repeats, rounds):
    """Median seconds per call of each candidate, rounds interleaved (one shared machine)."""
    times = {name: [] for name in candidates}
    for fn in candidates.values():
        _sync(fn(*args[fn]) if isinstance(args, dict) else fn(*args))
    for _ in range(rounds):
        for name, fn in candidates.items():
            inputs = args[fn] if isinstance(args, dict) else args
            start = time.perf_counter()
            for _ in range(repeats):
                out = fn(*inputs)
            _sync(out)
            times[name].append((time.perf_counter() - start) / repeats)
    return {name: statistics.median(t) for name, t in times.items()}


def _report(title, medians, baseline):
    print(f"\n{title}")
    for name, seconds in medians.items():
        ratio = f"x{medians[baseline] / seconds:6.2f} vs {baseline}" if baseline in medians else ""
        print(f"  {name:<46s} {seconds * 1e3:10.3f} ms   {ratio}")


def _torchvision():
    try:
        import torch
        import torchvision
    except ImportError:
        return None, None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torchvision, device


def _to_torch(array, device, dtype=None):
    import torch

    return torch.as_tensor(np.asarray(array), device=device, dtype=dtype)


def _torch_sync(fn):
    import torch

    def run(*args):
        out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out

    return run


def clustered_boxes(rng, n, size=800.0):
    centres = rng.uniform(0, size, (n // 10 + 1, 2))[rng.integers(0, n // 10 + 1, n)]
    centres = centres + rng.normal(0, 10, (n, 2))
    wh = rng.uniform(10, 100, (n, 2))
    boxes = np.concatenate([centres - wh / 2, centres + wh / 2], -1).astype("float32")
    return boxes, (rng.permutation(n) / n).astype("float32")


def bench_nms(rng, sizes, repeats, rounds):
    for n, k in sizes:
        boxes, scores = clustered_boxes(rng, n)
        ours = _compile(lambda b, s, k=k: non_max_suppression(b, s, k, 0.5))
        candidates, args = {}, {}
        name = f"ours ({BACKEND}, compiled)"
        candidates[name] = ours
        args[ours] = (ops.convert_to_tensor(boxes), ops.convert_to_tensor(scores))
        baseline = None
        if BACKEND == "tensorflow":
            import tensorflow as tf

            def reference(b, s, k=k):
                return tf.image.non_max_suppression(tf.gather(b, [1, 0, 3, 2], axis=1), s, k, 0.5)

            baseline = "tf.image.non_max_suppression"
            candidates[baseline] = tf.function(reference)
            args[candidates[baseline]] = args[ours]
            expected = candidates[baseline](*args[ours]).numpy()
        tv, device = _torchvision()
        if tv is not None:
            baseline = baseline or "torchvision.ops.nms"
            fn = _torch_sync(lambda b, s, k=k: tv.ops.nms(b, s, 0.5)[:k])
            candidates["torchvision.ops.nms"] = fn
            args[fn] = (_to_torch(boxes, device), _to_torch(scores, device))
            expected = fn(*args[fn]).cpu().numpy()
        indices = np.asarray(ops.convert_to_numpy(ours(*args[ours])[0]))
        if baseline is not None:
            assert np.array_equal(indices[: len(expected)], expected), "different selections"
        medians = _measure(candidates, args, repeats, rounds)
        _report(f"NMS: {n} boxes -> {k}, IoU 0.5 ({len(expected) if baseline else '?'} kept)", medians,
                baseline or name)


def inner_rois(rng, batch, per_image, size, stride, min_side=16.0, max_side=256.0):
    """Boxes whose RoIAlign samples all lie inside the map (so crop_and_resize agrees)."""
    limit = (size - 1) * stride
    max_side = min(max_side, limit / 2)
    wh = rng.uniform(min_side, max_side, (batch, per_image, 2))
    xy = rng.uniform(stride, limit - wh - stride)
    return np.concatenate([xy, xy + wh], -1).astype("float32")


def _crop_and_resize_roi_align(features, boxes, stride):
    """RoIAlign (aligned, ratio GRID) through tf.image.crop_and_resize on the same points."""
    import tensorflow as tf

    batch, per_image = boxes.shape[0], boxes.shape[1]
    size = features.shape[1]
    n = OUT * GRID
    b = tf.reshape(boxes, (-1, 4)) / stride - 0.5  # feature pixels, aligned
    step = (b[:, 2:] - b[:, :2]) / n  # (x, y)
    first, last = b[:, :2] + step / 2, b[:, 2:] - step / 2
    normalised = tf.stack([first[:, 1], first[:, 0], last[:, 1], last[:, 0]], -1) / (size - 1)
    crops = tf.image.crop_and_resize(features, normalised, tf.repeat(tf.range(batch), per_image), (n, n))
    pooled = tf.nn.avg_pool2d(crops, GRID, GRID, "VALID")
    return tf.reshape(pooled, (batch, per_image, OUT, OUT, features.shape[-1]))


def bench_roi_align(rng, rois, size, channels, repeats, rounds, gradients=True):
    stride = 4.0
    features = rng.normal(size=(2, size, size, channels)).astype("float32")
    for total in rois:
        boxes = inner_rois(rng, 2, total // 2, size, stride)
        f, b = ops.convert_to_tensor(features), ops.convert_to_tensor(boxes)

        def ours_fn(f, b):
            return roi_align(f, b, OUT, 1.0 / stride, GRID, aligned=True)

        candidates = {f"ours ({BACKEND}, compiled)": _compile(ours_fn)}
        args = {candidates[f"ours ({BACKEND}, compiled)"]: (f, b)}
        grads = {f"ours forward+backward ({BACKEND}, compiled)": _compile(_gradient(ours_fn))} if gradients else {}
        cotangent = ops.convert_to_tensor(rng.normal(size=(2, total // 2, OUT, OUT, channels)).astype("float32"))
        grad_args = {fn: (f, b, cotangent) for fn in grads.values()}
        baseline, grad_baseline = None, None
        ours_out = np.asarray(ops.convert_to_numpy(ours_fn(f, b)))
        if BACKEND == "tensorflow":
            import tensorflow as tf

            reference = tf.function(lambda f, b: _crop_and_resize_roi_align(f, b, stride))
            np.testing.assert_allclose(reference(f, b).numpy(), ours_out, atol=1e-4, rtol=1e-4)
            baseline = "tf.image.crop_and_resize + avg_pool (same points)"
            candidates[baseline] = reference
            args[reference] = (f, b)
            if gradients:
                grad_baseline = "tf.image.crop_and_resize forward+backward"
                grads[grad_baseline] = tf.function(_gradient(lambda f, b: _crop_and_resize_roi_align(f, b, stride)))
                grad_args[grads[grad_baseline]] = (f, b, cotangent)
        tv, device = _torchvision()
        if tv is not None:
            baseline = baseline or "torchvision.ops.roi_align"
            nchw = _to_torch(features.transpose(0, 3, 1, 2), device)
            indexed = np.concatenate([np.repeat(np.arange(2), total // 2)[:, None], boxes.reshape(-1, 4)], 1)
            torch_boxes = _to_torch(indexed.astype("float32"), device)
            fn = _torch_sync(lambda x, r: tv.ops.roi_align(x, r, OUT, 1.0 / stride, GRID, aligned=True))
            candidates["torchvision.ops.roi_align"] = fn
            args[fn] = (nchw, torch_boxes)
            theirs = fn(nchw, torch_boxes).cpu().numpy().transpose(0, 2, 3, 1).reshape(ours_out.shape)
            np.testing.assert_allclose(theirs, ours_out, atol=1e-4, rtol=1e-4)
        title = f"RoIAlign: {total} RoIs on [2, {size}, {size}, {channels}], {OUT}x{OUT}, ratio {GRID}"
        _report(title, _measure(candidates, args, repeats, rounds), baseline or next(iter(candidates)))
        if grads:
            _report(title + ", forward+backward", _measure(grads, grad_args, repeats, rounds),
                    grad_baseline or next(iter(grads)))


def bench_multilevel(rng, total, size, channels, repeats, rounds, previous=True):
    """P2-P5 of a ``size x size`` image; boxes of 16-512 px spread over the levels."""
    pyramid = [rng.normal(size=(2, size // 2**k, size // 2**k, channels)).astype("float32") for k in range(2, 6)]
    boxes = inner_rois(rng, 2, total // 2, size // 4, 4.0, 16.0, min(512.0, size * 0.6))
    tensors = [ops.convert_to_tensor(p) for p in pyramid]
    b = ops.convert_to_tensor(boxes)

    def multilevel(b, *levels):
        return multilevel_roi_align(list(levels), b, OUT, sampling_ratio=GRID)

    def single_level(b, *levels):
        return roi_align(levels[0], b, OUT, 0.25, GRID)

    def per_level_passes(b, *levels):  # the previous method: every box on every level
        assigned = fpn_level(b, 2, 5)[..., None, None, None]
        pooled = None
        for level, feature in enumerate(levels, start=2):
            out = roi_align(feature, b, OUT, 2.0 ** -level, GRID)
            pooled = out if pooled is None else ops.where(assigned == level, out, pooled)
        return pooled

    candidates = {
        "single-level pass of the same boxes (P2)": _compile(single_level),
        "multilevel_roi_align (one pass, own level)": _compile(multilevel),
    }
    if previous:
        candidates["one pass per level + select (previous)"] = _compile(per_level_passes)
        np.testing.assert_allclose(
            *[np.asarray(ops.convert_to_numpy(candidates[k](b, *tensors))) for k in list(candidates)[1:]],
            atol=1e-4, rtol=1e-4)
    counts = np.bincount(np.asarray(ops.convert_to_numpy(fpn_level(boxes))).ravel(), minlength=6)[2:]
    medians = _measure(candidates, (b, *tensors), repeats, rounds)
    _report(f"Multi-level RoIAlign: {total} RoIs on P2-P5 of a {size}x{size} image, C={channels} "
            f"(boxes per level {list(counts)})", medians, "single-level pass of the same boxes (P2)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one round, no backward and no previous-method rows: a smoke test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["nms", "roi_align", "multilevel"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"keras {keras.__version__}, backend {BACKEND}")
    if args.quick:
        args.repeats, args.rounds = 1, 1
        nms_sizes, rois, size, channels, ml_rois, ml_size = [(1000, 100)], [64], 32, 16, 64, 256
    else:
        nms_sizes = [(1000, 100), (5000, 300), (20000, 1000)]
        rois, size, channels, ml_rois, ml_size = [512, 2000], 200, 256, 512, 800
    if "nms" not in args.skip:
        bench_nms(rng, nms_sizes, args.repeats, args.rounds)
    if "roi_align" not in args.skip:
        bench_roi_align(rng, rois, size, channels, args.repeats, args.rounds, gradients=not args.quick)
    if "multilevel" not in args.skip:
        bench_multilevel(rng, ml_rois, ml_size, channels, args.repeats, args.rounds, previous=not args.quick)


if __name__ == "__main__":
    main()

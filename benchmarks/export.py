"""Predict time of one detector through Keras (``predict_step`` compiled with XLA, and without),
the exported SavedModel (``serving_default``) and the exported ONNX model in ONNX Runtime (CPU
execution provider), at batch 1 and 8, measured in one run (interleaved rounds, median).
Prints seconds per call and the ratios against Keras with XLA and SavedModel/ONNX.

The models are the examples' default small detectors with random weights: SSD-NET
(``examples/train_ssd_net.py``: ResNet-10 x0.25, 160 px, 5 classes) and CondInst
(``examples/train_condinst.py``: ResNet-10 x0.25, 128 px, 64-channel FPN, 5 classes). Keras
gets float32 images at the model's size; the SavedModel and ONNX get the same images as uint8
(their resize/pad runs at scale 1, and boxes are mapped back to the image), so the three do
the same work up to that pre/post-processing. Decoding and NMS are inside all three.

    KERAS_BACKEND=tensorflow python benchmarks/export.py [--models ssd_net condinst] [--rounds 3] [--runs 5]

Measured (2 cores of an Intel Xeon with AVX-512, TensorFlow 2.21, onnxruntime 1.32, about 2.5
minutes in all), time per call relative to Keras with XLA, batch 1 / 8: SSD-NET SavedModel
1.46 / 1.01, ONNX Runtime 1.07 / 0.92 (ONNX Runtime / SavedModel 0.73 / 0.92); CondInst
SavedModel 1.33 / 1.73, ONNX Runtime 1.05 / 1.74 (0.79 / 1.00). The serving paths also
resize and map 100 full-image masks per image back to the image. Under a heavier load from
other processes ONNX Runtime was up to 1.6 times slower than the SavedModel at batch 8: its
``Loop`` nodes (the NMS ``while`` loops inside a per-image ``map``) cost more there; the
per-image ``map`` of ``SSDDecoder`` could go (the NMS takes batches), which took SSD-NET's
ONNX Runtime time from 88 to 75 ms at batch 8 in a trial, with the same detections.
"""

import argparse
import os
import platform
import tempfile
import time

import keras
import numpy as np
import onnxruntime
import tensorflow as tf

from keras_cvx.export import export_onnx, export_saved_model
from keras_cvx.heads.condinst import CondInstMaskBranch
from keras_cvx.heads.fcos import FCOSHead
from keras_cvx.models import CondInst, FeaturePyramid, SSDNet
from timing import measure  # benchmarks/timing.py (this script's folder is on sys.path)

MODELS = {
    "ssd_net": lambda: SSDNet(5, image_size=160, backbone="resnet10", width_multiplier=0.25, fusion_channels=64),
    "condinst": lambda: CondInst(5, image_size=128, backbone="resnet10", width_multiplier=0.25,
                                 neck=FeaturePyramid(64), mask_branch=CondInstMaskBranch(32),
                                 head=FCOSHead(5, num_convs=2, groups=16, return_box_features=True)),
}
BATCHES = (1, 8)


def build(name, folder):
    """The model, its SavedModel signature and its ONNX Runtime session, with the export times."""
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    if name == "condinst":  # class logits 0 (sigmoid 0.5): the random model then gives detections and masks
        model.head.class_conv.bias.assign(np.zeros(model.head.class_conv.bias.shape, "float32"))
    size = model.image_size if isinstance(model.image_size, tuple) else (model.image_size, model.image_size)
    start = time.perf_counter()
    saved = export_saved_model(model, os.path.join(folder, name, "1"), size)
    saved_s = time.perf_counter() - start
    start = time.perf_counter()
    onnx_path = export_onnx(model, os.path.join(folder, name, "model.onnx"))
    onnx_s = time.perf_counter() - start
    print(f"{name}: {model.count_params():,} parameters, {size[0]}x{size[1]} px; export: SavedModel {saved_s:.0f} s, "
          f"ONNX {onnx_s:.0f} s ({os.path.getsize(onnx_path) / 1e6:.1f} MB)")
    serving = tf.saved_model.load(saved).signatures["serving_default"]
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    return model, size, serving, session


def run_onnx(session, images):
    return dict(zip([output.name for output in session.get_outputs()], session.run(None, {"images": images})))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--runs", type=int, default=5, help="calls per measurement")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    jobs = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            model, size, serving, session = build(name, folder)
            xla = tf.function(model.predict_step, jit_compile=True)
            graph = tf.function(model.predict_step, jit_compile=False)
            for batch in BATCHES:
                uint8 = rng.integers(0, 256, (batch, *size, 3)).astype("uint8")
                floats = uint8.astype("float32")
                jobs[(name, batch, "Keras XLA")] = lambda f=xla, x=floats: f(x)
                jobs[(name, batch, "Keras no XLA")] = lambda f=graph, x=floats: f(x)
                jobs[(name, batch, "SavedModel")] = lambda f=serving, x=tf.constant(uint8): f(images=x)
                jobs[(name, batch, "ONNX Runtime")] = lambda s=session, x=uint8: run_onnx(s, x)
        first, median = measure(jobs, args.rounds, args.runs)  # first calls: tracing, XLA compilation, warm-up
        counts = {key: int(np.sum(job()["num_detections"])) for key, job in jobs.items()}

    print(f"{cpu_name()}, {os.cpu_count()} cores (TensorFlow and ONNX Runtime use their default thread pools); "
          f"TensorFlow {tf.__version__}, onnxruntime {onnxruntime.__version__}; {args.rounds} rounds x {args.runs} "
          f"calls, median")
    print(f"{'model':<10}{'batch':>6}  {'path':<14}{'first call s':>13}{'ms/call':>10}{'images/s':>10}")
    for (name, batch, path), value in median.items():
        print(f"{name:<10}{batch:>6}  {path:<14}{first[(name, batch, path)]:>13.2f}{value * 1e3:>10.1f}"
              f"{batch / value:>10.1f}")
    print("ratios (time per call; < 1: faster than the reference):")
    for name, batch in sorted({key[:2] for key in median}):
        reference = median[(name, batch, "Keras XLA")]
        ratios = {path: median[(name, batch, path)] / reference
                  for path in ("Keras no XLA", "SavedModel", "ONNX Runtime")}
        text = ", ".join(f"{path}/Keras XLA = {ratio:.2f}" for path, ratio in ratios.items())
        onnx_vs_saved = median[(name, batch, "ONNX Runtime")] / median[(name, batch, "SavedModel")]
        print(f"  {name} batch {batch}: {text}, ONNX Runtime/SavedModel = {onnx_vs_saved:.2f} "
              f"(detections Keras/SavedModel/ONNX: "
              f"{'/'.join(str(counts[(name, batch, path)]) for path in ('Keras XLA', 'SavedModel', 'ONNX Runtime'))})")


if __name__ == "__main__":
    main()

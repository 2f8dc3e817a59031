"""CondInst vs the same FCOS without the mask branch and the dynamic mask heads: predict time
(images/s of detections with or without masks, XLA-compiled) at the paper's 800x800 with
ResNet-50, and the ``Trainer`` step with XLA on and off (TensorFlow). Everything is measured
in one run (interleaved rounds, median) and printed with the ratios.

"FCOS alone" is ``CondInst.fcos_detections(CondInst.fcos_outputs(images)[0])``: the same
backbone, FPN, FCOS head and decoding (thresholds, class-aware NMS, 100 detections) with the
same weights; CondInst adds the controller, the mask branch, the dynamic heads of the 100
detections and the up-sampling of their masks to 800x800 (arXiv 2003.05664, §3: masks cost
little over the detector).

    KERAS_BACKEND=tensorflow python benchmarks/condinst.py [--rounds 3] [--runs 2]
    KERAS_BACKEND=jax python benchmarks/condinst.py        # predict only: runs without TensorFlow

The train steps use smaller inputs than the predictions, so that their XLA compilation fits
a CPU run: the example's default model (ResNet-10 x0.25, 128x128, batch 4) and ResNet-50 at
256x256, batch 2.
"""

import argparse

import keras
import numpy as np
from timing import compiled, measure  # benchmarks/timing.py (this script's folder is on sys.path)

from keras_cvx.models.condinst import CondInst

BACKEND = keras.backend.backend()
PREDICT_SIZE = 800
TRAIN_CONFIGS = {
    "ResNet-10 x0.25, 128x128, batch 4": dict(
        model=dict(image_size=(128, 128), backbone="resnet10", width_multiplier=0.25), batch=4),
    "ResNet-50, 256x256, batch 2": dict(model=dict(image_size=(256, 256), backbone="resnet50"), batch=2),
}


def make_model(**options):
    keras.utils.set_random_seed(0)
    model = CondInst(80, **options)
    model.build()
    return model


def fcos_alone(model):
    def detect(images):
        detections = model.fcos_detections(model.fcos_outputs(images, training=False)[0])
        detections.pop("locations")
        return detections

    return detect


def training_targets(model, batch, rng):
    height, width = model.image_size
    boxes = np.zeros((batch, 8, 4), "float32")
    labels = np.full((batch, 8), -1, "int32")
    masks = np.zeros((batch, 8, height // 4, width // 4), "uint8")
    for b in range(batch):
        for m in range(4):
            x1, y1 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
            w, h = rng.uniform(width / 8, width / 2), rng.uniform(height / 8, height / 2)
            boxes[b, m], labels[b, m] = [x1, y1, x1 + w, y1 + h], rng.integers(0, 80)
            masks[b, m, int(y1) // 4:int(y1 + h) // 4, int(x1) // 4:int(x1 + w) // 4] = 1
    return {"boxes": boxes, "labels": labels, "masks": masks}


def train_jobs(rng, steps):
    """``{(config, xla): job}`` of ``steps`` Trainer steps each, one ``fit`` call (TensorFlow only)."""
    import tensorflow as tf

    from keras_cvx.training.trainer import Trainer

    jobs = {}
    for name, config in TRAIN_CONFIGS.items():
        for xla in (True, False):
            model = make_model(**config["model"])
            images = rng.uniform(0, 255, (config["batch"], *model.image_size, 3)).astype("float32")
            dataset = tf.data.Dataset.from_tensors((images, training_targets(model, config["batch"], rng))).repeat()
            trainer = Trainer(model, keras.optimizers.SGD(1e-3, momentum=0.9), jit_compile=xla, verbose=0)
            jobs[(name, xla)] = (lambda t=trainer, d=dataset: t.fit(d, int(t.step.numpy()) + steps)["loss"])
    return jobs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--runs", type=int, default=2, help="calls per measurement")
    parser.add_argument("--no-train", action="store_true", help="predict only")
    parser.add_argument("--train-steps", type=int, default=5, help="Trainer steps per timed fit call")
    parser.add_argument("--predict-size", type=int, default=PREDICT_SIZE, help="square input of the predictions")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    size = args.predict_size
    model = make_model(image_size=(size, size), backbone="resnet50")
    parts = {"controller": model.controller, "mask branch": model.mask_branch, "mask head": model.mask_head}
    print(f"backend {BACKEND}; CondInst (ResNet-50, 80 classes, {size}x{size}): "
          f"{model.count_params():,} parameters; trainable: "
          + ", ".join(f"{name} {sum(int(np.prod(w.shape)) for w in part.trainable_weights):,}"
                      for name, part in parts.items()))
    images = rng.uniform(0, 255, (1, size, size, 3)).astype("float32")
    predictors = {"FCOS alone": compiled(fcos_alone(model), model),
                  "CondInst (boxes + masks)": compiled(model.predict_step, model)}
    jobs = {("predict", name): (lambda p=p: p(images)) for name, p in predictors.items()}
    if BACKEND == "tensorflow" and not args.no_train:
        jobs.update({("train",) + key: job for key, job in train_jobs(rng, args.train_steps).items()})
    first_call, median = measure(jobs, args.rounds, args.runs)  # first calls: tracing and XLA compilation

    print(f"\npredict, batch 1, {size}x{size}, XLA ({args.rounds} rounds x {args.runs} runs, median):")
    for name in predictors:
        key = ("predict", name)
        print(f"  {name:26s} {median[key] * 1e3:9.1f} ms   (first call {first_call[key]:.1f} s)")
    overhead = median[("predict", "CondInst (boxes + masks)")] / median[("predict", "FCOS alone")]
    print(f"  masks cost: CondInst / FCOS alone = {overhead:.3f}x")
    if BACKEND == "tensorflow" and not args.no_train:
        print(f"\nTrainer step (SGD momentum; XLA on / off; a fit call of {args.train_steps} steps / {args.train_steps}):")
        for name in TRAIN_CONFIGS:
            on, off = (median[("train", name, xla)] / args.train_steps for xla in (True, False))
            print(f"  {name:36s} XLA {on:7.2f} s   no XLA {off:7.2f} s   XLA speed-up {off / on:.2f}x   "
                  f"(first call {first_call[('train', name, True)]:.0f} s / {first_call[('train', name, False)]:.0f} s)")


if __name__ == "__main__":
    main()

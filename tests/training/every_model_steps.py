"""One ``Trainer`` step of every model the package ships, under ``MirroredStrategy`` over 2
logical CPUs with XLA, in a fresh process (the logical CPUs must be configured before
TensorFlow initialises)::

    python -m tests.training.every_model_steps OUT.json [MODEL ...]

Writes ``{model: {"loss": ..., "replicas": ..., "unmoved": paths of the trainable variables
the step left unchanged, "finite": all variables finite, "seconds": build + compile + step}}``. CondInst and FasterRCNN are not here: their XLA steps under
Mirrored compile for minutes on 2 CPU cores; ``tests/models/test_condinst.py`` and
``tests/models/test_faster_rcnn.py`` run their Trainer steps under XLA and, separately, under
Mirrored (``tests/models/trainer_steps.py``).
"""

import json
import sys
import time

import numpy as np

MODELS = ("ssd_net", "resnet_classifier", "mobilenet_v2_classifier", "top_k_distiller")
GLOBAL_BATCH = 4


def classification_batch(size, classes, seed):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (GLOBAL_BATCH, size, size, 3)).astype("float32"),
            rng.integers(0, classes, GLOBAL_BATCH).astype("int32"))


def build(name):
    """``(model, batch)``; classifiers are compiled with their loss (the Trainer takes the
    compiled loss when the model has no ``compute_loss`` of its own)."""
    import keras

    from keras_cvx.losses.distillation import TopKDistillation
    from keras_cvx.models import MobileNetV2, ResNet

    keras.utils.set_random_seed(0)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "ssd_net":
        from tests.models.test_ssd_net import tiny_data, tiny_model

        images, targets = tiny_data(batch=GLOBAL_BATCH, seed=1)
        return tiny_model(), (images, targets)
    if name == "resnet_classifier":
        model = ResNet(depth=10, num_classes=3, input_shape=(32, 32, 3), base_width=8, attention="se",
                       classifier_activation=None)
        model.compile(loss=cross_entropy)
        return model, classification_batch(32, 3, 2)
    if name == "mobilenet_v2_classifier":
        model = MobileNetV2(alpha=0.35, num_classes=3, input_shape=(32, 32, 3), classifier_activation=None)
        model.compile(loss=cross_entropy)
        return model, classification_batch(32, 3, 3)
    teacher, student = (keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255.0),
                                          keras.layers.Conv2D(width, 3), keras.layers.GlobalAveragePooling2D(),
                                          keras.layers.Dense(10)]) for width in (8, 4))
    distiller = keras.distillation.Distiller(teacher=teacher, student=student,
                                             distillation_losses=TopKDistillation(k=5), student_loss_weight=0.5)
    distiller.compile(loss=cross_entropy)
    return distiller, classification_batch(16, 10, 4)


def main(out_path, names):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from keras_cvx.training.trainer import Trainer

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {}
    for name in names:
        start = time.perf_counter()
        with strategy.scope():
            model, batch = build(name)
            optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
        before = [v.numpy() for v in model.trainable_variables]
        trainer = Trainer(model, optimizer, strategy, jit_compile=True, verbose=0)
        loss = trainer.fit(tf.data.Dataset.from_tensors(batch).repeat(), 1)["loss"]
        after = [v.numpy() for v in model.trainable_variables]
        results[name] = {
            "loss": float(loss),
            "replicas": strategy.num_replicas_in_sync,
            "unmoved": [v.path for v, a, b in zip(model.trainable_variables, before, after) if np.array_equal(a, b)],
            "finite": bool(all(np.all(np.isfinite(v.numpy())) for v in model.variables)),
            "seconds": time.perf_counter() - start,
        }
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or MODELS)

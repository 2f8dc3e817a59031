"""Parameters and multiply-accumulates (MACs) of every backbone variant at 224×224 with a
1000-class classifier, next to the papers' (or reference code's) figures and the ratio.

Counts come from the built Functional graphs (``keras_cvx.models.complexity``: trainable
parameters as PyTorch counts them; MACs of convolutions, dense layers and CE's per-pixel
whitening matmul at one image, no BN/activations; the "+elementwise" column adds the
per-element multiplies of DY-ReLU, SE/CE/SlimConv reweighting and ReZero's α). References:

* spec = computed from the official code in ``papers/*.md`` (exact), README/abstract = the
  authors' published figure (rounded);
* ``keras.applications`` rows are counted by the same counter in the same run;
* DY-ReLU's ImageNet table is an unverified recollection in the spec (its params exclude the
  final FC, so our row subtracts it: "params w/o FC"), and the +4.1 M of DY-ReLU-ResNet-50 is
  known not to match "every ReLU, R = 4" (spec §5).

    python benchmarks/model_complexity.py          # about 30 s on 2 CPU cores
"""

import time

import keras

from keras_cvx.evaluation.results_table import format_table
from keras_cvx.models.backbones.mobilenet_v2 import MobileNetV2
from keras_cvx.models.backbones.resnet import ResNet
from keras_cvx.models.complexity import count_macs, count_parameters

FC_PARAMS = {"resnet18": 512 * 1000 + 1000, "resnet50": 2048 * 1000 + 1000, "mobilenetv2": 1280 * 1000 + 1000}

KERAS_RESNET50 = "keras.applications.ResNet50"
KERAS_MOBILENET = "keras.applications.MobileNetV2"

# (label, builder, reference params, reference GMACs, source, subtract the FC from our params);
# a reference given as a label is the count measured for that earlier row in the same run.
VARIANTS = [
    ("ResNet-18", lambda: ResNet(18), 11_689_512, 1.814, "torchvision; DY-ReLU table 1.81 G", None),
    ("DY-ReLU-B ResNet-18 (R=4)", lambda: ResNet(18, activation="dy_relu_b"), 12.8e6, 1.82, "DY-ReLU table (unverified), params w/o FC", "resnet18"),
    ("ResNet-50", lambda: ResNet(50), 25_557_032, 4.089, "spec (SlimConv §5)", None),
    ("keras.applications.ResNet50", lambda: keras.applications.ResNet50(weights=None), None, None, "MSRA v1 stride; conv biases", None),
    ("ResNet-50 stride_in_1x1", lambda: ResNet(50, stride_in_1x1=True), KERAS_RESNET50, KERAS_RESNET50, "measured keras.applications.ResNet50", None),
    ("SE-ResNet-50 (r=16)", lambda: ResNet(50, attention="se"), 28_088_024, None, "ResNet-50 + 2,530,992 (SE, 16 blocks)", None),
    ("CE-ResNet-50", lambda: ResNet(50, attention="ce"), 29_331_926, 4.228, "spec (CE §5: +134.9 M BD, +3.8 M IR)", None),
    ("DY-ReLU-B ResNet-50 (R=4)", lambda: ResNet(50, activation="dy_relu_b"), 27.6e6, 3.88, "DY-ReLU table (unverified), params w/o FC", "resnet50"),
    ("ReZero ResNet-50", lambda: ResNet(50, rezero=True), 25_557_032 + 12, 4.089, "ResNet-50 + one α per identity block", None),
    ("SC-ResNet-50", lambda: ResNet(50, conv="slim"), 16_758_740, 2.652, "spec; README 16.76 M, 2.65 G", None),
    ("ResNet-101", lambda: ResNet(101), 44_549_160, 7.801, "spec (SlimConv §5)", None),
    ("SC-ResNet-101", lambda: ResNet(101, conv="slim"), 27_956_708, 4.822, "spec; abstract 27.96 M, 4.87 GFLOPs", None),
    ("ResNet-152", lambda: ResNet(152), 60_192_808, 11.514, "spec (SlimConv §5)", None),
    ("SC-ResNet-152", lambda: ResNet(152, conv="slim"), 37_181_908, 6.992, "spec (computed)", None),
    ("keras.applications.MobileNetV2", lambda: keras.applications.MobileNetV2(weights=None), 3_504_872, 0.300, "paper 300 M", None),
    ("MobileNetV2 1.0", lambda: MobileNetV2(), KERAS_MOBILENET, KERAS_MOBILENET, "measured keras.applications.MobileNetV2", None),
    ("DY-ReLU-B MobileNetV2 (R=4)", lambda: MobileNetV2(activation="dy_relu_b"), 7.5e6, 0.315, "DY-ReLU paper: 315 M (params unverified, w/o FC)", "mobilenetv2"),
    ("SE-MobileNetV2 (r=4)", lambda: MobileNetV2(attention="se"), None, None, "no paper figure", None),
    ("CE-MobileNetV2", lambda: MobileNetV2(attention="ce"), None, None, "no paper figure", None),
]

COLUMNS = (
    ("model", "model", ""),
    ("params", "params", ""),
    ("reference_params", "ref params", ""),
    ("params_ratio", "ratio", ""),
    ("gmacs", "GMACs", ""),
    ("gmacs_elementwise", "+elementwise", ""),
    ("reference_gmacs", "ref GMACs", ""),
    ("macs_ratio", "ratio", ""),
    ("source", "reference", ""),
)


def _ratio(value, reference):
    return "—" if reference is None else f"{value / reference:.4f}"


def measure(label, build, reference_params, reference_gmacs, source, without_fc, measured):
    model = build()
    params = count_parameters(model) - (FC_PARAMS[without_fc] if without_fc else 0)
    gmacs = count_macs(model) / 1e9
    measured[label] = (params, gmacs)
    if isinstance(reference_params, str):
        reference_params, reference_gmacs = measured[reference_params]
    return {
        "model": label,
        "params": f"{params:,}",
        "reference_params": "—" if reference_params is None else f"{reference_params:,.0f}",
        "params_ratio": _ratio(params, reference_params),
        "gmacs": f"{gmacs:.4f}",
        "gmacs_elementwise": f"{count_macs(model, include_elementwise=True) / 1e9:.4f}",
        "reference_gmacs": "—" if reference_gmacs is None else f"{reference_gmacs:.4f}".rstrip("0").rstrip("."),
        "macs_ratio": _ratio(gmacs, reference_gmacs),
        "source": source,
    }


def main():
    started = time.perf_counter()
    rows, measured = [], {}
    for variant in VARIANTS:
        rows.append(measure(*variant, measured))
        keras.backend.clear_session()
    print(format_table(rows, COLUMNS))
    print(f"224x224, 1000 classes, backend {keras.backend.backend()}; wall time {time.perf_counter() - started:.0f} s")
    return rows


if __name__ == "__main__":
    main()

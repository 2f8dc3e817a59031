"""Output flags shared by the detection examples: where the SavedModel, the ONNX file, the
prediction picture and the evaluation numbers go.

``add_output_arguments(parser, name)`` adds the ``output`` group::

    --export-dir (saved_models/<name>), --export-version (1), --onnx,
    --png (saved_models/<name>/predictions.png), --results-json

``export_model(model, args, image_size)`` writes the SavedModel to
``<export-dir>/<export-version>`` and, with ``--onnx``, ``<export-dir>/model.onnx`` next to it
(``keras_cvx.export.export_onnx``, same input and outputs as the SavedModel's
``serving_default``; needs the ``[onnx]`` extra).

Example:

>>> import argparse
>>> from keras_cvx.export.cli import add_output_arguments
>>> parser = argparse.ArgumentParser()
>>> group = add_output_arguments(parser, "ssd_net")
>>> args = parser.parse_args([])
>>> args.export_dir.replace("\\\\", "/"), args.export_version, args.results_json, args.onnx
('saved_models/ssd_net', 1, None, False)
>>> parser.parse_args(["--onnx"]).onnx
True
"""

import os

from keras_cvx.export.onnx import export_onnx
from keras_cvx.export.saved_model import export_saved_model


def add_output_arguments(parser, name, png_help="picture of validation predictions"):
    """Adds the ``output`` argument group to ``parser`` and returns it (for more flags).

    Args:
        parser: an ``argparse.ArgumentParser``.
        name: the example's folder under ``saved_models``.
        png_help: help text of ``--png``.
    """
    output = parser.add_argument_group("output")
    output.add_argument("--export-dir", default=os.path.join("saved_models", name), help="SavedModel folder ('': no export)")
    output.add_argument("--export-version", type=int, default=1)
    output.add_argument("--onnx", action="store_true",
                        help="also write <export-dir>/model.onnx for ONNX Runtime (needs the [onnx] extra)")
    output.add_argument("--png", default=os.path.join("saved_models", name, "predictions.png"), help=png_help)
    output.add_argument("--results-json", default=None, help="write the final evaluation numbers here")
    return output


def export_model(model, args, image_size):
    """Writes the SavedModel (and the ONNX file with ``--onnx``) that ``args`` ask for, printing
    each path; nothing when ``--export-dir`` is empty. Returns the paths written.

    Args:
        model: the trained detector.
        args: the parsed flags of ``add_output_arguments``.
        image_size: ``(height, width)`` of the model's input.
    """
    if not args.export_dir:
        return []
    paths = [export_saved_model(model, os.path.join(args.export_dir, str(args.export_version)), image_size)]
    if args.onnx:
        paths.append(export_onnx(model, os.path.join(args.export_dir, "model.onnx"), image_size))
    for path in paths:
        print("exported", path)
    return paths

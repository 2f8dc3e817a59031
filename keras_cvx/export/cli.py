"""Output flags shared by the detection examples: where the SavedModel, the prediction
picture and the evaluation numbers go.

``add_output_arguments(parser, name)`` adds the ``output`` group::

    --export-dir (saved_models/<name>), --export-version (1),
    --png (saved_models/<name>/predictions.png), --results-json

Example:

>>> import argparse
>>> from keras_cvx.export.cli import add_output_arguments
>>> parser = argparse.ArgumentParser()
>>> group = add_output_arguments(parser, "ssd_net")
>>> args = parser.parse_args([])
>>> args.export_dir.replace("\\\\", "/"), args.export_version, args.results_json
('saved_models/ssd_net', 1, None)
"""

import os


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
    output.add_argument("--png", default=os.path.join("saved_models", name, "predictions.png"), help=png_help)
    output.add_argument("--results-json", default=None, help="write the final evaluation numbers here")
    return output

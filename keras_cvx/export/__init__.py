"""Export for serving: SavedModel (TF Serving) and ONNX (ONNX Runtime, TensorRT, OpenVINO)."""

from keras_cvx.export.onnx import export_onnx
from keras_cvx.export.saved_model import export_saved_model

"""SavedModel export for TF Serving."""

from keras_cvx.export.saved_model import export_saved_model

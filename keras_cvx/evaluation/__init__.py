"""COCO evaluation with pycocotools."""

from keras_cvx.evaluation.coco_evaluator import COCOEvaluationCallback, COCOEvaluator

"""Evaluation: COCO metrics with pycocotools, retrieval recall, result tables."""

from keras_cvx.evaluation.coco_evaluator import COCOEvaluationCallback, COCOEvaluator
from keras_cvx.evaluation.results_table import format_table
from keras_cvx.evaluation.retrieval import recall_at_k

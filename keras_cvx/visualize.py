"""Pictures of detections: boxes, class names, scores and instance masks drawn onto an
image with NumPy and Pillow (no TensorFlow, so it works under every Keras backend).

``draw_detections`` returns a new uint8 ``[H, W, 3]`` array; ``save_png`` writes one.
Rows with label ``-1`` (padding) are skipped, so padded model outputs and padded targets of
``keras_cvx.data.coco`` can be passed as they are.
"""

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40]],
    np.uint8,
)


def draw_detections(image, boxes, labels, scores=None, masks=None, class_names=None, mask_alpha=0.45, line_width=2):
    """Draws instances onto a copy of ``image``.

    Args:
        image: ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]``, uint8 or float in 0..255.
        boxes: ``[N, 4]`` ``xyxy`` pixels of ``image``.
        labels: ``[N]`` int class ids, ``-1`` = padding (not drawn).
        scores: optional ``[N]``, printed after the name.
        masks: optional ``[N, H, W]`` (0/1 or probabilities, threshold 0.5), blended in.
        class_names: optional sequence indexed by label; the label number otherwise.

    Returns:
        uint8 ``[H, W, 3]``; colours follow the label.
    """
    canvas = np.asarray(image, dtype=np.float32)
    if canvas.ndim == 2:
        canvas = canvas[..., None]
    if canvas.ndim != 3 or canvas.shape[-1] not in (1, 3):
        raise ValueError(f"`image` must be [H, W], [H, W, 1] or [H, W, 3], got shape {canvas.shape}.")
    canvas = np.nan_to_num(np.clip(canvas, 0, 255))
    canvas = np.repeat(canvas, 3, axis=-1) if canvas.shape[-1] == 1 else canvas.copy()
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(f"`labels` must have one entry per box ({boxes.shape[0]}), got {labels.shape[0]}.")
    keep = labels >= 0
    colours = _PALETTE[np.maximum(labels, 0) % len(_PALETTE)]

    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != (boxes.shape[0],) + canvas.shape[:2]:
            raise ValueError(f"`masks` must have shape {(boxes.shape[0],) + canvas.shape[:2]}, got {masks.shape}.")
        for i in np.flatnonzero(keep):
            region = masks[i] >= 0.5
            canvas[region] = (1 - mask_alpha) * canvas[region] + mask_alpha * colours[i]

    picture = Image.fromarray(np.round(canvas).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for i in np.flatnonzero(keep):
        if not np.isfinite(boxes[i]).all():
            continue
        x1, y1, x2, y2 = boxes[i].tolist()
        colour = tuple(int(c) for c in colours[i])
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=line_width)
        name = class_names[labels[i]] if class_names is not None and labels[i] < len(class_names) else str(labels[i])
        text = name if scores is None else f"{name} {float(np.asarray(scores).reshape(-1)[i]):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, ty, x1 + (right - left) + 2, ty + (bottom - top) + 2], fill=colour)
        draw.text((x1 + 1, ty), text, fill=(0, 0, 0), font=font)
    return np.asarray(picture)


def save_png(path, image):
    """Writes the uint8 ``[H, W, 3]`` (or ``[H, W]``) ``image`` to ``path`` as PNG; returns ``path``."""
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, format="PNG")
    return path


def save_detections_png(path, images, detections, class_names=None, min_score=0.3):
    """Draws ``images [B, H, W, 3]`` side by side with their ``detections`` (the detection
    contract: ``boxes``, ``classes``, ``scores``, and ``masks`` when present) whose score is at
    least ``min_score``, and writes the PNG to ``path`` (its folder is created); returns ``path``."""
    out = {k: np.asarray(v) for k, v in detections.items()}
    pictures = []
    for b, image in enumerate(np.asarray(images)):
        labels = np.where(out["scores"][b] >= min_score, out["classes"][b], -1)
        masks = out["masks"][b] if "masks" in out else None
        pictures.append(draw_detections(image, out["boxes"][b], labels, out["scores"][b], masks=masks,
                                        class_names=class_names))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return save_png(path, np.concatenate(pictures, axis=1))

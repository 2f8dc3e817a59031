"""Detection heads."""

from keras_cvx.heads.ssd import SSDHead

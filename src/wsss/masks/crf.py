"""Dense CRF refinement (docs/method.md §4), a thin, validated wrapper around pydensecrf.

Unary = −log(p) of the (K+1)-stack [bg, refined CAMs] (p clipped at `eps`, as pydensecrf's
`unary_from_softmax`); the stack is used as is, not renormalised, as in the CLIP-ES reference.
Pairwise terms: an appearance-free Gaussian (smoothness) and a bilateral kernel on position + RGB that
snaps labels to colour edges. The image must be the real uint8 RGB image (the reference's
mean-subtracted uint8 cast wraps negative values — a bug we do not copy).
"""

from __future__ import annotations

import numpy as np

from wsss.settings import CrfSettings

EPS = 1e-5


def _check_inputs(image: np.ndarray, probs: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"CRF image must be a uint8 numpy array, got {getattr(image, 'dtype', type(image))}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"CRF image must be H×W×3 RGB, got shape {image.shape}")
    if not image.flags.c_contiguous:
        raise ValueError("CRF image must be C-contiguous (use np.ascontiguousarray)")
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"CRF unary must be an L×H×W probability stack, got shape {probs.shape}")
    if probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"CRF unary is {probs.shape[1]}×{probs.shape[2]} but the image is "
                         f"{image.shape[0]}×{image.shape[1]}")


def dense_crf(image_rgb: np.ndarray, unary_probs: np.ndarray, *, gaussian_sxy: float = 1, gaussian_compat: float = 3,
              bilateral_sxy: float = 67, bilateral_srgb: float = 3, bilateral_compat: float = 4,
              iterations: int = 10, eps: float = EPS) -> np.ndarray:
    """Mean-field marginals, (K+1)×H×W float32 summing to 1 per pixel."""
    import pydensecrf.densecrf as dcrf  # deferred: only CRF users pay for the import

    probs = np.asarray(unary_probs, dtype=np.float32)
    _check_inputs(image_rgb, probs)
    if not image_rgb.flags.writeable:  # pydensecrf's memoryview needs a writable buffer (np.asarray(PIL) is not)
        image_rgb = image_rgb.copy()
    n_labels, height, width = probs.shape
    unary = np.ascontiguousarray(-np.log(np.clip(probs, eps, None)).reshape(n_labels, -1))
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image_rgb, compat=bilateral_compat)
    q = crf.inference(int(iterations))
    return np.asarray(q, dtype=np.float32).reshape(n_labels, height, width)


def crf_refine(image_rgb: np.ndarray, unary_probs: np.ndarray, params: CrfSettings = CrfSettings()) -> np.ndarray:
    """`dense_crf` with the `masks.crf` settings."""
    return dense_crf(image_rgb, unary_probs, **params.as_dict())

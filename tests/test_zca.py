"""ZCA whitening (algorithm.md section 5) on the real CIFAR-10 subset.

With C = U diag(S) U^T the covariance of the training pixels, ZCA with eps whitens by
T = (C + eps I)^(-1/2). The whitened training covariance is then T C T = C (C + eps I)^-1:
the same eigenvectors, eigenvalues S / (S + eps) (close to 1 only where S >> eps = 0.1,
so "close to identity" means exactly this, not I)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from trajdistill.data import ZCA, ImageDataset, Preprocess, load_dataset
from trajdistill.data.zca_apply import with_zca

EPS = 0.1


def covariance(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1).double()
    xc = x - x.mean(0)
    return xc.T @ xc / (x.shape[0] - 1)


def test_no_channel_normalisation_with_zca(cifar_zca):
    # As in the reference: ZCA replaces the CIFAR mean/std normalisation.
    pre = cifar_zca.preprocess
    assert pre.zca is not None and pre.mean == (0.0, 0.0, 0.0) and pre.std == (1.0, 1.0, 1.0)
    assert cifar_zca.describe()["zca"] is True
    assert cifar_zca.train.images.dtype == torch.uint8  # whitening happens per batch


def test_whitened_train_covariance(cifar_zca):
    pixels = cifar_zca.train.images.double() / 255.0
    c = covariance(pixels)
    white = cifar_zca.preprocess(cifar_zca.train.images)
    assert white.dtype == torch.float32 and white.shape == cifar_zca.train.images.shape
    assert white.reshape(len(white), -1).mean(0).abs().max() < 1e-5  # centred on the train mean
    cw = covariance(white)
    s = torch.linalg.eigvalsh(c).clamp_min(0)
    expected = torch.sort(s / (s + EPS)).values
    assert torch.allclose(torch.linalg.eigvalsh(cw), expected, atol=1e-4)
    # ... with C's eigenvectors: Cw (C + eps I) = C.
    eye = torch.eye(c.shape[0], dtype=c.dtype)
    assert (cw @ (c + EPS * eye) - c).abs().max() < 1e-5 * c.abs().max() + 1e-6
    assert expected[-1] > 0.99 and expected[0] < 0.01  # far from I for small S: eps at work


def test_inverse_recovers_pixels(cifar_zca):
    x = cifar_zca.test.images[:200]
    back = cifar_zca.preprocess.inverse(cifar_zca.preprocess(x))
    assert torch.allclose(back, x.float() / 255.0, atol=1e-4)


def test_state_dict_round_trip(cifar_zca):
    restored = Preprocess.from_state_dict(cifar_zca.preprocess.state_dict())
    x = cifar_zca.test.images[:16]
    assert torch.equal(restored(x), cifar_zca.preprocess(x))


# ---------------------------------------------------------------- small, exact checks

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_matches_the_reference_formula(digits):
    # kornia's ZCAWhitening (the reference): unbiased covariance, SVD, T = U (S+eps)^-1/2 U^T.
    fitted = with_zca(digits).preprocess.zca
    x = digits.train.images.reshape(len(digits.train), -1).double() / 255.0
    u, s, _ = torch.linalg.svd(covariance(x))
    t = u @ torch.diag(1.0 / torch.sqrt(s + EPS)) @ u.T
    assert torch.allclose(fitted.transform.double(), t, atol=1e-5)
    assert torch.allclose(fitted.inverse.double(), torch.linalg.inv(t), atol=1e-4)
    assert torch.allclose(fitted.mean.double(), x.mean(0), atol=1e-7)


def test_fitted_on_training_images_only(digits):
    blank = ImageDataset(torch.zeros_like(digits.test.images), digits.test.labels, digits.classes)
    a = with_zca(digits).preprocess.zca
    b = with_zca(replace(digits, test=blank)).preprocess.zca
    assert torch.equal(a.transform, b.transform) and torch.equal(a.mean, b.mean)


def test_tiny_eps_gives_identity_covariance():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    x = (torch.randn(4000, 12, generator=gen, dtype=torch.float64) @ mix).reshape(4000, 3, 2, 2)
    zca = ZCA.fit(x.float(), eps=1e-8)
    cw = covariance(zca.whiten(x.float()))
    assert torch.allclose(cw, torch.eye(12, dtype=cw.dtype), atol=1e-3)

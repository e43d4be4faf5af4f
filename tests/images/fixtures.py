"""pytest fixtures of the realistic test image (import them into a conftest or test module)."""

from __future__ import annotations

import pytest

from tests.images.builder import LayerSpec, windows_image


@pytest.fixture(scope="session")
def image_specs() -> list[LayerSpec]:
    """The three layers of :func:`~tests.images.builder.windows_image`."""
    return windows_image()


@pytest.fixture(scope="session")
def image_tars(image_specs: list[LayerSpec]) -> list[bytes]:
    """Their layer tars (made once per session)."""
    return [spec.tar() for spec in image_specs]

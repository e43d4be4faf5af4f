"""pytest fixtures of the realistic test image: ``image_specs`` and ``image_tars``.

Import ``image_specs_fixture`` and ``image_tars_fixture`` into a conftest or test module.
"""

from __future__ import annotations

import pytest

from tests.images.builder import LayerSpec, windows_image


@pytest.fixture(scope="session", name="image_specs")
def image_specs_fixture() -> list[LayerSpec]:
    """The three layers of :func:`~tests.images.builder.windows_image`."""
    return windows_image()


@pytest.fixture(scope="session", name="image_tars")
def image_tars_fixture(image_specs: list[LayerSpec]) -> list[bytes]:
    """Their layer tars (made once per session)."""
    return [spec.tar() for spec in image_specs]

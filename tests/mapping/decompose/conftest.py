"""Fixtures shared by the contract tests over every registered family (exactness, store)."""
from __future__ import annotations

import pytest
from torch import nn

from tests.mapping.decompose.tiny_models import CASES, TinyCase


@pytest.fixture(scope="module", params=CASES, ids=[case.id for case in CASES])
def case(request: pytest.FixtureRequest) -> TinyCase:
    return request.param


@pytest.fixture(scope="module")
def model(case: TinyCase) -> nn.Module:
    """The case's model, shared by the tests that leave it as they found it."""
    return case.model()

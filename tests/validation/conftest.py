"""The tiny datasets here have three users: the gate's minimum is lowered to fit them."""

from __future__ import annotations

import pytest

from shortlist.config import Params


@pytest.fixture
def params(params: Params) -> Params:
    return params.with_overrides({"validation.min_users": 2})

"""The subpackage's public names: the names of the previous release warn and return the new objects."""

from __future__ import annotations

import pytest
import torch

from kexue import mitchell
from kexue.mitchell import transformer

RENAMED = {
    "mitchell_mul": mitchell.mul,
    "mitchell_div": mitchell.div,
    "mitchell_log2": mitchell.log2,
    "mitchell_exp2": mitchell.exp2,
    "mitchell_matmul": mitchell.matmul,
    "mitchell_bmm": mitchell.bmm,
    "mitchell_linear": mitchell.linear,
    "mitchell_attention": mitchell.attention,
    "mitchell_softmax": mitchell.softmax,
    "mitchell_attention_forward": transformer.attention_forward,
}


@pytest.mark.parametrize(("old", "new"), RENAMED.items(), ids=list(RENAMED))
def test_old_name_warns_and_returns_the_new_function(old: str, new: object) -> None:
    with pytest.warns(DeprecationWarning, match=rf"kexue\.mitchell\.{old} is deprecated .* use kexue\.mitchell\."):
        got = getattr(mitchell, old)
    assert got is new
    assert old not in mitchell.__all__


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="mitchell_nothing"):
        _ = mitchell.mitchell_nothing


def test_options_are_keyword_only() -> None:
    x = torch.tensor([1.5, 3.0])
    with pytest.raises(TypeError):
        mitchell.mul(x, x, "piecewise")  # type: ignore[call-overload]  # the point: correction is keyword-only
    with pytest.raises(TypeError):
        mitchell.softmax(x, -1)  # type: ignore[call-arg]  # the point: dim is keyword-only
    with pytest.raises(TypeError):
        mitchell.AttentionSwitches(True, False)  # type: ignore[call-arg]  # the point: built with keywords

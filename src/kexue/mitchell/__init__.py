"""Mitchell's approximate arithmetic: multiplication by adding the bit patterns (kexue.fm/archives/7991).

* :mod:`kexue.mitchell.reference`: the scalar definition (Python integers, ``struct``).
* :func:`mul`, :func:`div`, :func:`log2`, :func:`exp2`: element-wise on tensors / NumPy arrays
  (float32, float16, bfloat16, float64, float8_e4m3fn, float8_e5m2); corrections ``"constant"``,
  ``"piecewise"``, ``"lmul"``.
* :func:`matmul`, :func:`bmm`; :func:`linear`, :class:`MitchellLinear`, :class:`MitchellConv2d`,
  :func:`mitchellize`, :func:`track_errors` for training with Mitchell products.
* :mod:`kexue.mitchell.transformer`: attention (:func:`attention`, :class:`AttentionSwitches`),
  :func:`softmax`, RMS/layer norms and the gated-MLP product, for whole Transformers.

The subpackage is the namespace: ``from kexue import mitchell; mitchell.matmul(a, b)``. The names of
the previous release (``mitchell_mul``, ``mitchell_matmul``, ...) still work, with a DeprecationWarning.

Example:
    >>> import torch
    >>> from kexue import mitchell
    >>> mitchell.mul(torch.tensor([12.3]), torch.tensor([4.56]))  # the article's 12.3 × 4.56 = 56.088
    tensor([53.6800])
"""

from kexue._shared import deprecated_alias
from kexue.mitchell.matrix import bmm, matmul
from kexue.mitchell.nn import MitchellConv2d, MitchellLinear, linear, mitchellize, track_errors
from kexue.mitchell.ops import div, exp2, log2, mul
from kexue.mitchell.transformer import AttentionSwitches, attention, attention_forward, softmax

__all__ = [
    "AttentionSwitches",
    "MitchellConv2d",
    "MitchellLinear",
    "attention",
    "bmm",
    "div",
    "exp2",
    "linear",
    "log2",
    "matmul",
    "mitchellize",
    "mul",
    "softmax",
    "track_errors",
]

# the names of the previous release, for one more release (CONTRIBUTING.md: the subpackage is the namespace)
__getattr__ = deprecated_alias(
    __name__,
    {
        "mitchell_mul": ("mul", mul),
        "mitchell_div": ("div", div),
        "mitchell_log2": ("log2", log2),
        "mitchell_exp2": ("exp2", exp2),
        "mitchell_matmul": ("matmul", matmul),
        "mitchell_bmm": ("bmm", bmm),
        "mitchell_linear": ("linear", linear),
        "mitchell_attention": ("attention", attention),
        "mitchell_attention_forward": ("transformer.attention_forward", attention_forward),
        "mitchell_softmax": ("softmax", softmax),
    },
)

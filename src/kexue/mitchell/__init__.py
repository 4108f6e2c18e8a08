"""Mitchell's approximate arithmetic: multiplication by adding the bit patterns (kexue.fm/archives/7991).

* :mod:`kexue.mitchell.reference`: the scalar definition (Python integers, ``struct``).
* :func:`mitchell_mul`, :func:`mitchell_div`, :func:`mitchell_log2`, :func:`mitchell_exp2`:
  element-wise on tensors / NumPy arrays (float32, float16, bfloat16, float64, float8_e4m3fn,
  float8_e5m2); corrections ``"constant"``, ``"piecewise"``, ``"lmul"``.
* :func:`mitchell_matmul`, :func:`mitchell_bmm`; :class:`MitchellLinear`, :class:`MitchellConv2d`,
  :func:`mitchellize`, :func:`track_errors` for training with Mitchell products.
* :mod:`kexue.mitchell.transformer`: attention (:func:`mitchell_attention`,
  :class:`AttentionSwitches`), RMS/layer norms and the gated-MLP product, for whole Transformers.
"""

from kexue.mitchell.matmul import mitchell_bmm, mitchell_matmul
from kexue.mitchell.nn import MitchellConv2d, MitchellLinear, mitchellize, track_errors
from kexue.mitchell.ops import mitchell_div, mitchell_exp2, mitchell_log2, mitchell_mul
from kexue.mitchell.transformer import AttentionSwitches, mitchell_attention, mitchell_softmax

__all__ = [
    "AttentionSwitches",
    "MitchellConv2d",
    "MitchellLinear",
    "mitchell_attention",
    "mitchell_bmm",
    "mitchell_div",
    "mitchell_exp2",
    "mitchell_log2",
    "mitchell_matmul",
    "mitchell_mul",
    "mitchell_softmax",
    "mitchellize",
    "track_errors",
]

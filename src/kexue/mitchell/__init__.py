"""Mitchell's approximate arithmetic: multiplication by adding the bit patterns (kexue.fm/archives/7991).

* :mod:`kexue.mitchell.reference`: the scalar definition (Python integers, ``struct``).
* :func:`mitchell_mul`, :func:`mitchell_div`, :func:`mitchell_log2`, :func:`mitchell_exp2`:
  element-wise on tensors / NumPy arrays (float32, float16, bfloat16, float64).
* :func:`mitchell_matmul`; :class:`MitchellLinear`, :class:`MitchellConv2d`, :func:`mitchellize`,
  :func:`track_errors` for training with Mitchell products.
"""

from kexue.mitchell.matmul import mitchell_matmul
from kexue.mitchell.nn import MitchellConv2d, MitchellLinear, mitchellize, track_errors
from kexue.mitchell.ops import mitchell_div, mitchell_exp2, mitchell_log2, mitchell_mul

__all__ = ["MitchellConv2d", "MitchellLinear", "mitchell_div", "mitchell_exp2", "mitchell_log2", "mitchell_matmul",
           "mitchell_mul", "mitchellize", "track_errors"]

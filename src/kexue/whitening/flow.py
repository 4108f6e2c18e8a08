"""The baseline the article replaces: a BERT-flow-style normalising flow on sentence vectors.

BERT-flow (Li et al., EMNLP 2020, arXiv:2011.05864) maps sentence vectors to a standard
Gaussian with a Glow model trained by maximum likelihood on the target sentences. Here the
flow acts on the vectors themselves (no convolutions): ``n_layers`` blocks of

* ActNorm: per-dimension affine map, initialised from the first batch to zero mean, unit variance;
* a fixed random permutation of the dimensions (Glow's 1x1 convolution, not learned here);
* an affine coupling layer (RealNVP): the second half is scaled and shifted by an MLP of the
  first half, ``b' = b · exp(s(a)) + t(a)`` with ``s`` bounded by ``tanh``.

``log p(x) = log N(z; 0, I) + Σ log|det ∂z/∂x|``, maximised with Adam. :class:`FlowWhitening`
wraps training and ``transform`` (z for new vectors) with the scikit-learn contract.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils import Tags
from torch import nn

from kexue._shared import check_int, check_number
from kexue.whitening.whitening import validate_rows

__all__ = ["FlowWhitening", "VectorFlow"]


class _ActNorm(nn.Module):
    initialised: torch.Tensor  # bool buffer: set by the first forward (data-dependent initialisation)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.initialised):
            with torch.no_grad():
                self.loc.copy_(-x.mean(0))
                std = x.std(0)
                # a (near-)constant feature would get an enormous scale: floor it
                self.log_scale.copy_(-torch.log(std.clamp_min(1e-3 * float(std.median()) + 1e-12)))
                self.initialised.fill_(True)
        return (x + self.loc) * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])


class _Coupling(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.kept = dim // 2  # the first half passes through and conditions the second
        first = nn.Linear(self.kept, hidden)
        middle = nn.Linear(hidden, hidden)
        last = nn.Linear(hidden, 2 * (dim - self.kept))
        self.net = nn.Sequential(first, nn.GELU(), middle, nn.GELU(), last)
        nn.init.zeros_(last.weight)  # starts as the identity
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x[:, : self.kept], x[:, self.kept :]
        s, t = self.net(a).chunk(2, dim=1)
        s = torch.tanh(s)
        return torch.cat([a, b * s.exp() + t], 1), s.sum(1)


class VectorFlow(nn.Module):
    """Glow-style flow on ``(N, dim)`` vectors: ``forward(x) -> (z, log|det J|)``.

    Args:
        dim: the vectors' width.
        n_layers: the number of ActNorm + permutation + coupling blocks.
        hidden: the width of each coupling's MLP.
        seed: the fixed permutations' seed.
    """

    def __init__(self, dim: int, *, n_layers: int = 4, hidden: int = 256, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.norms = nn.ModuleList(_ActNorm(dim) for _ in range(n_layers))
        self.couplings = nn.ModuleList(_Coupling(dim, hidden) for _ in range(n_layers))
        for i in range(n_layers):
            self.register_buffer(f"perm{i}", torch.randperm(dim, generator=g))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``x`` to the latent ``z``.

        Args:
            x: the vectors, ``(N, dim)``.

        Returns:
            ``(z, log|det ∂z/∂x|)``: ``(N, dim)`` and ``(N,)``.
        """
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i, (norm, coupling) in enumerate(zip(self.norms, self.couplings, strict=True)):
            x, ld = norm(x)
            logdet = logdet + ld
            x = x[:, getattr(self, f"perm{i}")]
            x, ld = coupling(x)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = log N(z; 0, I) + log|det ∂z/∂x|``.

        Args:
            x: the vectors, ``(N, dim)``.

        Returns:
            The log-density of each vector, ``(N,)``.
        """
        z, logdet = self(x)
        return -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi)) + logdet


class FlowWhitening(TransformerMixin, BaseEstimator):
    """Fit a :class:`VectorFlow` by maximum likelihood; ``transform`` returns ``z``.

    Args:
        n_layers: flow depth (BERT-flow used a 2-level, 3-step Glow on 768-d vectors).
        hidden: the width of the couplings' MLPs.
        epochs: passes of Adam over the fitted vectors (gradient norm clipped at 10).
        batch_size: vectors per step.
        lr: Adam's learning rate.
        noise: training inputs get Gaussian noise of this many times the mean feature standard
            deviation. Sentence vectors are rank-deficient (LayerNorm outputs lie on a
            hyperplane), where the maximum likelihood is unbounded and training diverges; the
            noise bounds it (the usual dequantisation of flows).
        seed: initialisation, permutation and batch order.
    """

    # fitted state (scikit-learn's convention: set by fit, absent before)
    flow_: VectorFlow
    loss_curve_: list[float]
    n_features_in_: int

    def __init__(
        self,
        *,
        n_layers: int = 4,
        hidden: int = 256,
        epochs: int = 10,
        batch_size: int = 256,
        lr: float = 1e-3,
        noise: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.n_layers = n_layers
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.noise = noise
        self.seed = seed

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # the flow computes and returns float32
        return tags

    def _check_params(self) -> None:
        check_int("n_layers", self.n_layers, 1)
        check_int("hidden", self.hidden, 1)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 2)
        check_number("lr", self.lr, above=0)
        if not (isinstance(self.noise, (int, float)) and math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise={self.noise!r} must be a finite number >= 0")

    def fit(self, X: npt.ArrayLike | torch.Tensor, y: object = None) -> FlowWhitening:
        """Train the flow on the rows of ``X`` (on the CPU, in float32).

        Args:
            X: the rows, ``(n_samples, n_features)``, at least 2 of them.
            y: ignored (scikit-learn's signature).

        Returns:
            self, with ``flow_``, ``loss_curve_`` (nats per dimension, per epoch) and ``n_features_in_``.
        """
        self._check_params()
        x = validate_rows(self, X, reset=True).to(device="cpu", dtype=torch.float32)
        if x.shape[0] < 2:
            raise ValueError(
                f"FlowWhitening needs at least 2 samples to fit; got n_samples = {x.shape[0]} "
                f"(X of shape {tuple(x.shape)})"
            )
        torch.manual_seed(self.seed)
        flow = VectorFlow(x.shape[1], n_layers=self.n_layers, hidden=self.hidden, seed=self.seed)
        g = torch.Generator().manual_seed(self.seed)
        jitter = self.noise * float(x.std(0).mean())
        with torch.no_grad():  # data-dependent ActNorm initialisation on a large first batch, noised like training
            first = x[torch.randperm(len(x), generator=g)[: max(self.batch_size, 4096)]]
            flow(first + jitter * torch.randn(first.shape, generator=g))
        self.loss_curve_ = self._train(flow, x, jitter, g)
        self.flow_ = flow.eval()
        self.n_features_in_ = int(x.shape[1])
        return self

    def _train(self, flow: VectorFlow, x: torch.Tensor, jitter: float, g: torch.Generator) -> list[float]:
        """Adam on ``-log p`` (nats per dimension) for ``epochs`` passes; the mean loss of each."""
        optimizer = torch.optim.Adam(flow.parameters(), lr=self.lr)
        curve: list[float] = []
        for _ in range(self.epochs):
            order = torch.randperm(len(x), generator=g)
            total = 0.0
            for start in range(0, len(x), self.batch_size):
                batch = x[order[start : start + self.batch_size]]
                if jitter:
                    batch = batch + jitter * torch.randn(batch.shape, generator=g)
                loss = -flow.log_prob(batch).mean() / x.shape[1]  # nats per dimension
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            if not math.isfinite(total):
                raise FloatingPointError("flow training diverged (non-finite likelihood); lower lr")
            curve.append(total / len(x))
        return curve

    def transform(self, X: npt.ArrayLike | torch.Tensor) -> np.ndarray:
        """The latent ``z`` of each row (float32 NumPy, computed on the CPU).

        Args:
            X: the rows, ``(n_samples, n_features_in_)``.

        Returns:
            ``z``, ``(n_samples, n_features_in_)`` float32.
        """
        if not hasattr(self, "flow_"):
            raise NotFittedError("this FlowWhitening is not fitted yet; call fit first")
        x = validate_rows(self, X).to(device="cpu", dtype=torch.float32)
        with torch.no_grad():
            return self.flow_(x)[0].numpy()

"""SLIM's sliding clusters (Han et al., 2025, arXiv 2410.07739, Sec. 3.3): the state of weight yielding.

:class:`SlidingClusters` keeps running centres and per-channel spreads of a router's inputs and scores an input by
its distance d = max_c |x - c| / sigma - 1 to the nearest centre; :class:`~minimal_loramoe.LoRAMoELinear` turns d
into a bonus on the identity experts' logits (see :meth:`~minimal_loramoe.LoRAMoELinear.gates`).
"""
import torch
import torch.nn.functional as F
from torch import nn


class SlidingClusters(nn.Module):
    """N running clusters of a router's inputs, as buffers (saved with the adapter), updated only in training.

    SLIM models the fine-tuning inputs as a mixture of Gaussians: centre ``c_j`` (N, D) and per-channel variance
    ``var_j`` (N, D). How an input x compares with them:

        score_j(x) = max over channels of |x - c_j| / sigma_j,   sigma_j = sqrt(var_j + eps)
        d(x)       = min_j score_j(x) - 1                           (distance to the nearest centre)

    Choices where the paper is silent:

    * Start: the paper draws random centres; here the first training batch seeds them (N random tokens of the
      batch as centres, the batch's per-channel variance as every cluster's spread), so no cluster starts far
      from all the data. Before any training update the centres are 0 and the variances 1.
    * Update ("sliding"): each token of a training batch is assigned to the centre with the smallest score; a
      centre that got tokens moves a fraction ``momentum`` towards their mean, and its variance a fraction
      ``momentum`` towards their mean squared distance from the moved centre (an exponential moving average,
      i.e. a window of roughly 1/momentum batches). Every token counts, padding included (the layer does not
      see the attention mask). Nothing changes in eval mode.
    * ``d_ref``: the same moving average of the mean d of the training tokens, the reference the yield rule
      measures from (see :meth:`LoRAMoELinear.gates`).
    """

    def __init__(self, dim: int, num_clusters: int, momentum: float = 0.02, eps: float = 1e-6, device=None):
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be a number in (0, 1], got {momentum!r}")
        self.momentum, self.eps = momentum, eps
        self.register_buffer("centres", torch.zeros(num_clusters, dim, device=device))  # (N, D) float32
        self.register_buffer("var", torch.ones(num_clusters, dim, device=device))  # (N, D)
        self.register_buffer("d_ref", torch.zeros((), device=device))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long, device=device))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """max_c |x - c_j| / sigma_j for every cluster j, in float32 and without gradient: (..., D) -> (..., N)."""
        x = x.detach().float().unsqueeze(-2)  # (..., 1, D)
        # (..., N, D) in memory: fine at the book's scale; a large model would loop over clusters instead
        return ((x - self.centres).abs() * (self.var + self.eps).rsqrt()).amax(-1)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """d = max_c |x - c| / sigma - 1 to the nearest centre: (..., D) -> (...,)."""
        return self.scores(x).amin(-1) - 1

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """One sliding step with every token of a training batch x (..., D)."""
        x = x.detach().float().reshape(-1, x.shape[-1])  # (n, D)
        n, N = x.shape[0], self.centres.shape[0]
        if self.num_updates == 0:  # seed the clusters from the first batch
            pick = torch.randperm(n, device=x.device)[torch.arange(N, device=x.device) % n]  # (N,)
            self.centres.copy_(x[pick])
            self.var.copy_(x.var(0, unbiased=False).expand_as(self.var))
            self.d_ref.copy_(self.distance(x).mean())
        else:
            s = self.scores(x)  # (n, N)
            onehot = F.one_hot(s.argmin(-1), N).float()  # (n, N) nearest centre of each token
            count = onehot.sum(0).unsqueeze(-1)  # (N, 1)
            mean = onehot.T @ x / count.clamp(min=1)  # (N, D)
            mean_sq = onehot.T @ x.square() / count.clamp(min=1)  # (N, D)
            m = self.momentum * (count > 0).float()  # (N, 1): a cluster that got no token stays where it is
            c = self.centres + m * (mean - self.centres)
            var_batch = (mean_sq - 2 * c * mean + c.square()).clamp(min=0)  # E[(x - c)^2] over its tokens
            self.var += m * (var_batch - self.var)
            self.centres.copy_(c)
            self.d_ref += self.momentum * (s.amin(-1).mean() - 1 - self.d_ref)
        self.num_updates += 1

    def extra_repr(self) -> str:
        return f"num_clusters={self.centres.shape[0]}, dim={self.centres.shape[1]}, momentum={self.momentum:g}"

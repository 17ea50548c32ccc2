"""Vector quantization with an (optionally L2-normalised) learned codebook, as in LlamaGen and FQGAN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, QuantizerOutput


def entropy_loss(logits: torch.Tensor, temperature: float, diversity_gamma: float = 1.0) -> torch.Tensor:
    """Mean per-sample entropy minus `diversity_gamma` x entropy of the batch mean, of softmax(logits / temperature)."""
    logits = logits.reshape(-1, logits.shape[-1]).float() / temperature
    probs = logits.softmax(dim=-1)
    sample_entropy = -(probs * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
    avg_probs = probs.mean(dim=0)
    # The 1e-5 keeps log finite for codes no sample picks; it matches the official LlamaGen loss.
    avg_entropy = -(avg_probs * torch.log(avg_probs + 1e-5)).sum()
    return sample_entropy - diversity_gamma * avg_entropy


def _squared_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, D) x (K, D) -> (N, K) squared Euclidean distances, ||x||^2 + ||e||^2 - 2 x.e."""
    # addmm fuses the (N, K) product with the codebook term, saving two passes over the largest tensor.
    return torch.addmm(codebook.pow(2).sum(dim=1), x, codebook.t(), alpha=-2).add_(x.pow(2).sum(dim=1, keepdim=True))


def sample_rows(x: torch.Tensor, num: int) -> torch.Tensor:
    """`num` random rows of x, without replacement when x has enough rows."""
    if x.shape[0] >= num:
        return x[torch.randperm(x.shape[0], device=x.device)[:num]]
    return x[torch.randint(0, x.shape[0], (num,), device=x.device)]


class Codebook(nn.Embedding):
    """A learned codebook whose forward returns all its codes, so that the weight is read only in its own forward.

    Offloading and layerwise-casting hooks (diffusers' group offload, accelerate's device maps) onload and cast a
    layer's weight around its forward alone, so the quantizer looks its codes up through this call.
    """

    def __init__(self, codebook_size: int, dim: int, l2_norm: bool):
        super().__init__(codebook_size, dim)
        self.l2_norm = l2_norm

    def forward(self) -> torch.Tensor:
        """The (K, D) fp32 codebook, L2-normalised when `l2_norm`."""
        # Always a copy (`.float()` alone returns the weight itself in fp32): an offloading hook swaps the weight's
        # storage out when this forward returns.
        weight = self.weight.to(torch.float32, copy=True)
        return F.normalize(weight, dim=-1) if self.l2_norm else weight


class VectorQuantizer(Quantizer):
    """Nearest-neighbour vector quantizer with straight-through gradients (LlamaGen's `VectorQuantizer`).

    The codebook lives in `embedding` so that official weights map to `quantize.embedding.weight`.
    With `kmeans_init=True` the first training forward replaces the codebook with k-means centroids of that
    batch's latents; in distributed training, broadcast the codebook from rank 0 afterwards (the same applies
    after `restart_dead_codes`), since every rank draws its own random samples.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        commit_loss_beta: float = 0.25,
        l2_norm: bool = True,
        entropy_loss_ratio: float = 0.0,
        entropy_temperature: float = 0.01,
        usage_window: int = 65536,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
    ):
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be positive, got {codebook_size} and {dim}")
        if usage_window < 1:
            raise ValueError(f"usage_window must be at least 1, got {usage_window}")
        if entropy_temperature <= 0:
            raise ValueError(f"entropy_temperature must be positive, got {entropy_temperature}")
        if kmeans_init and kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be at least 1 when kmeans_init=True, got {kmeans_iters}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.commit_loss_beta = commit_loss_beta
        self.l2_norm = l2_norm
        self.entropy_loss_ratio = entropy_loss_ratio
        self.entropy_temperature = entropy_temperature
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters

        self.embedding = Codebook(codebook_size, dim, l2_norm)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if l2_norm:
            with torch.no_grad():
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        # FIFO of the most recent code indices (-1 = empty slot); statistics only, so not saved.
        self.register_buffer("codebook_used", torch.full((usage_window,), -1, dtype=torch.long), persistent=False)
        if kmeans_init:
            self.register_buffer("initted", torch.tensor(False))

    def codebook(self) -> torch.Tensor:
        """The (K, D) fp32 codebook, L2-normalised when `l2_norm`."""
        return self.embedding()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize (B, D, H, W) latents to their nearest codes."""
        self.check_latents(z)
        b, _, h, w = z.shape
        # Nearest-code search in bf16 flips near ties, so distances and argmin always run in fp32.
        with torch.autocast(z.device.type, enabled=False):
            flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim).float()
            if self.l2_norm:
                flat = F.normalize(flat, dim=-1)
            if self.training and self.needs_data_init:
                self._kmeans_init(flat.detach())
            codebook = self.codebook()
            distances = _squared_distances(flat, codebook)
            indices = distances.argmin(dim=1)
            quantized = codebook[indices]

            losses = {
                "codebook_loss": F.mse_loss(quantized, flat.detach()),
                "commit_loss": self.commit_loss_beta * F.mse_loss(quantized.detach(), flat),
            }
            if self.training and self.entropy_loss_ratio > 0:
                losses["entropy_loss"] = self.entropy_loss_ratio * entropy_loss(-distances, self.entropy_temperature)
            quantized = flat + (quantized - flat).detach()

        if self.training:
            self._record_usage(indices)
        quantized = quantized.view(b, h, w, self.dim).permute(0, 3, 1, 2).to(z.dtype)
        return QuantizerOutput(quantized, indices.view(b, h, w), losses, self.used_codes().float().mean())

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) long indices -> (B, D, H, W) codes."""
        indices = self.check_indices(indices, ndim=3)
        return self.codebook()[indices].permute(0, 3, 1, 2)

    def used_codes(self) -> torch.Tensor:
        """(K,) bool mask of the codes that appear in the usage window."""
        # Slot 0 takes the window's unfilled (-1) entries; a boolean mask instead would wait for the device.
        used = torch.zeros(self.codebook_size + 1, dtype=torch.bool, device=self.codebook_used.device)
        return used.index_fill_(0, self.codebook_used + 1, True)[1:]

    @torch.no_grad()
    def restart_dead_codes(self, latents: torch.Tensor) -> int:
        """Replace codes absent from the usage window by random rows of `latents` (N, D); return how many.

        Call it once the window has filled: before that, codes merely not yet seen count as dead.
        """
        if latents.ndim != 2 or latents.shape[1] != self.dim or latents.shape[0] == 0:
            raise ValueError(
                f"latents must be a non-empty (N, {self.dim}) tensor, got shape {tuple(latents.shape)}; "
                "flatten (B, D, H, W) maps with z.permute(0, 2, 3, 1).reshape(-1, D)"
            )
        dead = ~self.used_codes()
        num_dead = int(dead.sum())
        if num_dead:
            replacements = sample_rows(latents.float(), num_dead)
            if self.l2_norm:
                replacements = F.normalize(replacements, dim=-1)
            self.embedding.weight[dead] = replacements.to(self.embedding.weight)
        return num_dead

    @torch.no_grad()
    def _record_usage(self, indices: torch.Tensor) -> None:
        window = self.codebook_used.numel()
        self.codebook_used.copy_(torch.cat([self.codebook_used, indices])[-window:])

    @torch.no_grad()
    def _kmeans_init(self, latents: torch.Tensor) -> None:
        centroids = sample_rows(latents, self.codebook_size)
        for _ in range(self.kmeans_iters):
            assignment = _squared_distances(latents, centroids).argmin(dim=1)
            counts = torch.bincount(assignment, minlength=self.codebook_size).unsqueeze(1)
            means = torch.zeros_like(centroids).index_add_(0, assignment, latents) / counts.clamp_min(1)
            if self.l2_norm:
                means = F.normalize(means, dim=-1)
            # An empty cluster keeps its centroid instead of collapsing to the origin.
            centroids = torch.where(counts > 0, means, centroids)
        self.embedding.weight.copy_(centroids)
        self.initted.fill_(True)

"""Cosine-distance codebook updated by EMA, as VQ-KD (BEiT-v2 `NormEMAVectorQuantizer`, the VQ-KD benchmark).

Latents and codes are L2-normalised; a latent takes the code of highest cosine similarity. The codebook gets no
gradient: after each training batch, every code that was chosen moves towards the normalised mean of its
latents, code <- normalize(decay * code + (1 - decay) * normalize(mean)), with the counts and sums all-reduced
across processes so that every rank keeps the same codebook. Codes start from k-means of the first batch. The codes
live in `embedding.weight`, the official key, and are read through `embedding()` only, so that offloading hooks
(diffusers' group offload, accelerate's device maps), which onload a module around its forward, see every read.

With `dead_code_threshold > 0` (off by default, as in the official quantizer), a code whose EMA of assignments per
batch falls below the threshold is restarted at a random latent of the current batch (rank 0's, broadcast), the
remedy for the dead codes that k-means + EMA leave behind on small data (vector-quantize-pytorch's
`threshold_ema_dead_code`). It counts the dead codes on the host, so on a GPU that option makes each training step
wait for the device once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, QuantizerOutput
from .vq import sample_rows


def collective_device(device: torch.device, backend_config: str) -> torch.device:
    """Where a collective on a `device` tensor can run in a group of `backend_config` (`dist.get_backend_config()`):
    on `device` when a backend serves it, else on this process's accelerator. accelerate's NCCL groups serve only
    CUDA, and the codebook init runs on the CPU, before the model moves to the GPU."""
    if f"{device.type}:" in backend_config:
        return device
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None or f"{accelerator.type}:" not in backend_config:
        raise RuntimeError(f"the process group ({backend_config}) has no backend for {device.type} tensors; "
                           "initialise it with one (e.g. backend='cpu:gloo,cuda:nccl')")
    index = getattr(torch.accelerator, "current_device_index", None) or torch.accelerator.current_device_idx  # < 2.7
    return torch.device(accelerator.type, index())


def _collective(op, tensor: torch.Tensor, **kwargs) -> torch.Tensor:
    """`op` (an in-place collective: dist.all_reduce, dist.broadcast) on `tensor` when running distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    device = collective_device(tensor.device, dist.get_backend_config())
    if device == tensor.device:
        op(tensor, **kwargs)
    else:
        moved = tensor.to(device)
        op(moved, **kwargs)
        tensor.copy_(moved)
    return tensor


class EMACodebook(nn.Module):
    """Unit-norm codes held as a buffer (learned by EMA, so no optimizer or gradient touches them); `forward`
    returns them, so that the buffer is read only in this module's own forward."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.register_buffer("weight", F.normalize(torch.randn(codebook_size, dim), dim=-1))

    def forward(self) -> torch.Tensor:
        """A copy of the (K, D) codebook."""
        # A copy, not the buffer: an offloading hook swaps the buffer's storage out when this forward returns.
        return self.weight.clone()


class CosineEMAQuantizer(Quantizer):
    """Nearest code by cosine similarity; EMA codebook (no gradient), commitment loss, straight-through."""

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        decay: float = 0.99,
        commitment_weight: float = 1.0,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
    ):
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be positive, got {codebook_size} and {dim}")
        if not 0 <= decay < 1:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        if kmeans_init and kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be at least 1 when kmeans_init=True, got {kmeans_iters}")
        if not dead_code_threshold >= 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.decay = decay
        self.commitment_weight = commitment_weight
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.embedding = EMACodebook(codebook_size, dim)
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self.dead_code_threshold = dead_code_threshold
        if dead_code_threshold > 0:  # saved with the model, so a resumed run restarts the same codes
            self.register_buffer("cluster_size", torch.ones(codebook_size))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize (B, D, H, W) latents to their most similar codes."""
        self.check_latents(z)
        b, _, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):  # similarities and the EMA in fp32
            flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, self.dim).float(), dim=-1)
            if self.training and self.needs_data_init:
                self._kmeans_init(flat.detach())
            codebook = self.embedding().float()  # a half-precision model still searches in fp32
            indices = (flat @ codebook.t()).argmax(dim=1)
            quantized = codebook[indices]
            losses = {"commit_loss": self.commitment_weight * F.mse_loss(flat, quantized.detach())}
            if self.training:
                self._ema_update(flat.detach(), indices)
            quantized = flat + (quantized - flat).detach()
        quantized = quantized.view(b, h, w, self.dim).permute(0, 3, 1, 2).to(z.dtype)
        return QuantizerOutput(quantized, indices.view(b, h, w), losses)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) long indices -> (B, D, H, W) unit-norm codes."""
        indices = self.check_indices(indices, ndim=3)
        return self.embedding()[indices].permute(0, 3, 1, 2)

    @staticmethod
    def rename_legacy_keys(state_dict: dict[str, torch.Tensor], prefix: str) -> None:
        """Rename in place the keys of this quantizer (at `prefix`) that folders saved by older versions use."""
        old = prefix + "codebook"  # before the codebook took the official key
        if old in state_dict:
            state_dict[prefix + "embedding.weight"] = state_dict.pop(old)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        self.rename_legacy_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def codebook(self) -> torch.Tensor:
        """The (K, D) codebook buffer, for the in-place EMA and k-means updates of training."""
        return self.embedding.weight

    @torch.no_grad()
    def _ema_update(self, latents: torch.Tensor, indices: torch.Tensor) -> None:
        counts = _collective(dist.all_reduce, torch.bincount(indices, minlength=self.codebook_size).float())
        sums = _collective(dist.all_reduce, torch.zeros_like(self.codebook).index_add_(0, indices, latents))
        chosen = counts > 0
        means = F.normalize(sums / counts.clamp_min(1).unsqueeze(1), dim=-1)
        moved = F.normalize(self.decay * self.codebook + (1 - self.decay) * means, dim=-1)
        self.codebook.copy_(torch.where(chosen.unsqueeze(1), moved, self.codebook))
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(latents, counts)

    @torch.no_grad()
    def _restart_dead_codes(self, latents: torch.Tensor, counts: torch.Tensor) -> None:
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        dead = self.cluster_size < self.dead_code_threshold  # the same on every rank: counts are all-reduced
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        codebook = self.codebook.clone()
        codebook[dead] = sample_rows(latents, num_dead)
        _collective(dist.broadcast, codebook, src=0)  # every rank drew its own rows: keep rank 0's
        self.codebook.copy_(codebook)
        self.cluster_size[dead] = 1.0  # a fresh code gets a grace period before it can be restarted again

    @torch.no_grad()
    def _kmeans_init(self, latents: torch.Tensor) -> None:
        """Spherical k-means of `latents` (the first batch) sets the codebook; identical on every rank given the
        same batch and seed."""
        centroids = sample_rows(latents, self.codebook_size)
        for _ in range(self.kmeans_iters):
            assignment = (latents @ centroids.t()).argmax(dim=1)
            counts = torch.bincount(assignment, minlength=self.codebook_size).unsqueeze(1)
            means = F.normalize(torch.zeros_like(centroids).index_add_(0, assignment, latents), dim=-1)
            centroids = torch.where(counts > 0, means, centroids)  # an empty cluster keeps its centroid
        self.codebook.copy_(centroids)
        self.initted.fill_(True)

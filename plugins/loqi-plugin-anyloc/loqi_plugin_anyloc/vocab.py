"""Build an AnyLoc VLAD vocabulary: facet descriptors of a dataset's images → FAISS k-means centres.

AnyLoc clusters L2-normalised descriptors with cosine k-means and keeps each centre as the plain mean of
its members (not re-normalised). FAISS spherical k-means gives the same assignments; one final pass
recomputes every centre as its members' mean so the file means what an official one means.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def sample_descriptors(latent: torch.Tensor, per_image: int | None, generator: torch.Generator) -> list[np.ndarray]:
    """(B, C, h, w) descriptor maps → per image up to ``per_image`` random patch descriptors (all if None)."""
    out = []
    for item in latent.flatten(2).transpose(1, 2).float().cpu():
        if per_image is not None and per_image < item.shape[0]:
            item = item[torch.randperm(item.shape[0], generator=generator)[:per_image]]
        out.append(item.numpy())
    return out


def kmeans_centers(descriptors: np.ndarray, clusters: int, niter: int = 100, seed: int = 0) -> torch.Tensor:
    """Cosine k-means of (N, C) descriptors → (clusters, C) member-mean centres (float32)."""
    import faiss

    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    if len(x) < clusters:
        raise ValueError(f"{len(x)} descriptors cannot make {clusters} clusters; use more images or --per-image")
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    km = faiss.Kmeans(x.shape[1], clusters, niter=niter, seed=seed, spherical=True, verbose=False)
    km.train(x)
    labels = (x @ km.centroids.T).argmax(1)
    centers = km.centroids.copy()
    for k in range(clusters):
        members = x[labels == k]
        if len(members):
            centers[k] = members.mean(0)
    return torch.from_numpy(centers)


def collect(model, images: Sequence, batch_size: int, per_image: int | None, device: torch.device, seed: int) -> np.ndarray:
    """Encoder descriptors of ``images`` (paths), batched by equal prepared size, with a progress bar."""
    from loqi_core.plugin import progress, read_image

    g = torch.Generator().manual_seed(seed)
    found: list[np.ndarray] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            with torch.inference_mode():
                found.extend(sample_descriptors(model.encoder(torch.cat(pending)), per_image, g))
            pending.clear()

    for path in progress(images, desc="anyloc vocab: descriptors", unit="img"):
        x = model.prepare([read_image(path)], device=device)
        if pending and (x.shape != pending[0].shape or len(pending) >= batch_size):
            flush()
        pending.append(x)
    flush()
    return np.concatenate(found)

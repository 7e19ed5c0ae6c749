"""NetVLAD cluster initialisation: sample L2-normalised local features of a model's encoder, k-means them.

The original (pytorch-NetVlad ``--mode=cluster``) samples 100 local features from each of 500 images
(50 000 in all), runs FAISS k-means for 100 iterations, and sets the soft-assignment sharpness alpha from
the features' similarities to the centres (see ``NetVLAD.init_from_clusters``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from loqi_core.plugin import ConfigError, VPRModel, read_image


@torch.inference_mode()
def sample_local_features(
    model: VPRModel,
    paths: Sequence[Path],
    per_image: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """``per_image`` random L2-normalised local features (rows of C values) from each image's latent map."""
    from loqi_core.plugin import progress as progress_bar

    rng = np.random.default_rng(seed)
    model = model.to(device).eval()
    chunks = []
    for path in progress_bar(paths, desc="local features", unit="img", disable=not progress):
        x = model.prepare([read_image(path)], device=device)
        latent = model.encoder(x)
        latent = latent[0] if isinstance(latent, tuple) else latent
        local = F.normalize(latent.float(), p=2, dim=1).flatten(2)[0].T  # (h·w)×C
        n = local.shape[0]
        pick = rng.choice(n, size=min(per_image, n), replace=False)
        chunks.append(local[torch.from_numpy(pick).to(local.device)].cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


def kmeans(features: np.ndarray, clusters: int, niter: int = 100, seed: int = 0) -> np.ndarray:
    """FAISS k-means centres (K×C) of the rows of ``features``."""
    import faiss

    features = np.ascontiguousarray(features, dtype=np.float32)
    if len(features) < clusters:
        raise ConfigError(
            f"{len(features)} local features cannot make {clusters} clusters: use more images (--images) "
            "or more features per image (--per-image)"
        )
    km = faiss.Kmeans(features.shape[1], clusters, niter=niter, seed=seed, verbose=False)
    km.train(features)
    return np.asarray(km.centroids, dtype=np.float32)


def pick_images(paths: Sequence[Path], count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct images drawn at random (all of them when there are fewer)."""
    rng = np.random.default_rng(seed)
    if count >= len(paths):
        return list(paths)
    return [paths[i] for i in sorted(rng.choice(len(paths), size=count, replace=False))]

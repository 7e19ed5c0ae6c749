"""``loqi anyloc ...``: build AnyLoc VLAD vocabularies (torch is imported inside the commands)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("anyloc")
def anyloc_group() -> None:
    """AnyLoc tools: build a VLAD vocabulary (cluster centres) from your own images."""


@anyloc_group.command("vocab")
@click.option("--dataset", "dataset", required=True,
              help="Where the images come from: NAME (under --data-root or $LOQI_DATA) or NAME:PATH, e.g. folder:/data/pitts30k.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="The database images of the dataset's test set (AnyLoc's map-specific vocabulary), or its training images.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None, help="Dataset root (default $LOQI_DATA).")
@click.option("--weights", default="official", show_default=True,
              help='Backbone weights: "official" (DINOv2 ViT-g/14), "random", a loqi checkpoint or a hub-format file.')
@click.option("--encoder-params", default="{}", show_default=True,
              help='JSON object of encoder params, e.g. \'{"layer": 31, "facet": "value"}\'.')
@click.option("--clusters", type=int, default=32, show_default=True, help="Number of centres.")
@click.option("--images", "num_images", type=int, default=None,
              help="Use at most this many images, evenly spaced over the list (default: all).")
@click.option("--per-image", type=int, default=None,
              help="Patch descriptors sampled from each image (default: all of them).")
@click.option("--niter", type=int, default=100, show_default=True, help="k-means iterations.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images per forward pass.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help='"auto" (cuda when available), "cpu", "cuda".')
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Output .safetensors file holding one clusters×C tensor named \"centers\".")
def vocab_command(
    dataset: str, split: str, data_root: Path | None, weights: str, encoder_params: str, clusters: int,
    num_images: int | None, per_image: int | None, niter: int, batch_size: int, seed: int, device: str, out: Path,
) -> None:
    """Build an AnyLoc VLAD vocabulary with FAISS k-means over a dataset's images.

    The AnyLoc encoder (with --weights) turns each image into L2-normalised facet descriptors per patch;
    cosine k-means of them gives the centres, written as safetensors (the official per-domain .pt files load too).
    Use it with `aggregator_params.vocabulary=OUT` (and the same `aggregator_params.clusters`).

    \b
    Example:
      loqi anyloc vocab --dataset folder:/data/pitts30k -o runs/pitts_c32.safetensors
      loqi eval --method anyloc --dataset folder:/data/pitts30k \\
          --set model.aggregator_params.vocabulary=runs/pitts_c32.safetensors
    """
    import numpy as np

    from loqi_core import build_model, load_dataset
    from loqi_core.plugin import ConfigError, resolve_device
    from loqi_plugin_anyloc.vocab import collect, kmeans_centers

    if out.suffix != ".safetensors":
        raise click.BadParameter(f"{out}: loqi writes vocabularies as .safetensors", param_hint="-o/--out")

    try:
        enc_params = json.loads(encoder_params)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--encoder-params is not valid JSON: {exc}") from None
    dev = resolve_device(device)
    model = build_model(
        "anyloc", weights=weights, encoder_params=enc_params,
        aggregator_params={"clusters": clusters, "vocabulary": "random"},
    ).eval().to(dev)
    data = load_dataset(dataset, split, root=data_root)
    paths = data.database.paths if split == "test" else data.images.paths
    if num_images is not None and num_images < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, num_images).round().astype(int)]
    descriptors = collect(model, paths, batch_size, per_image, dev, seed)
    click.echo(f"{len(descriptors)} descriptors of {descriptors.shape[1]} dims from {len(paths)} images")
    try:
        centers = kmeans_centers(descriptors, clusters, niter=niter, seed=seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"centers": centers.contiguous()}, str(out))
    click.echo(f"wrote {tuple(centers.shape)} centres to {out}")

"""``loqi netvlad ...``: commands for NetVLAD aggregators (torch is imported inside the commands)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("netvlad")
def netvlad_group() -> None:
    """NetVLAD tools: initialise the clusters of a NetVLAD aggregator from your data."""


@netvlad_group.command("init-clusters")
@click.option("--method", default="netvlad", show_default=True,
              help="Any method whose aggregator is NetVLAD (netvlad, lite0-netvlad, ...).")
@click.option("--dataset", "dataset", required=True,
              help="Where the images come from: NAME (under --data-root or $LOQI_DATA) or NAME:PATH, e.g. folder:/data/pitts30k.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Use the dataset's training images, or the database images of its test set.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None, help="Dataset root (default $LOQI_DATA).")
@click.option("--weights", default="imagenet", show_default=True,
              help='Encoder weights to compute features with: a variant name ("imagenet"), "random", or a file.')
@click.option("--clusters", type=int, default=None,
              help="Number of clusters K (default: the method's). Pass the same aggregator_params.clusters when loading.")
@click.option("--images", "num_images", type=int, default=500, show_default=True, help="Images to sample.")
@click.option("--per-image", type=int, default=100, show_default=True, help="Local features sampled from each image.")
@click.option("--niter", type=int, default=100, show_default=True, help="k-means iterations.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help='"auto" (cuda when available), "cpu", "cuda".')
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Output folder: a loqi checkpoint (model.safetensors + model.json) to pass as --weights.")
def init_clusters_command(
    method: str, dataset: str, split: str, data_root: Path | None, weights: str, clusters: int | None,
    num_images: int, per_image: int, niter: int, seed: int, device: str, out: Path,
) -> None:
    """Initialise a NetVLAD aggregator's centroids with FAISS k-means on local features of a dataset.

    Needed when training NetVLAD from ImageNet weights (as the original does with --mode=cluster): the
    encoder (with --weights) turns --images sampled images into L2-normalised local features, --per-image of
    each are k-means clustered, and the soft-assignment sharpness alpha is set from the features' similarities
    to the centres. The whole model is written as a loqi checkpoint; use it with `--weights OUT`.

    \b
    Example:
      loqi netvlad init-clusters --dataset folder:/data/pitts30k --split test -o runs/netvlad-init
      loqi distill --method netvlad --weights runs/netvlad-init ...
    """
    from loqi_core import build_model, load_dataset
    from loqi_core.plugin import ConfigError, resolve_device, save_checkpoint
    from loqi_plugin_netvlad.clusters import kmeans, pick_images, sample_local_features
    from loqi_plugin_netvlad.layer import NetVLAD

    agg_params = {"clusters": clusters} if clusters is not None else None
    model = build_model(method, weights=weights, aggregator_params=agg_params)
    if not isinstance(model.aggregator, NetVLAD):
        raise ConfigError(f'method "{method}" does not use a NetVLAD aggregator (it uses "{model.info["aggregator"]}")')
    data = load_dataset(dataset, split, root=data_root)
    images = data.images if split == "train" else data.database  # type: ignore[union-attr]
    if len(images) == 0:
        raise ConfigError(f'dataset "{dataset}" ({split}) has no images')
    dev = resolve_device(device)
    paths = pick_images(images.paths, num_images, seed)
    features = sample_local_features(model, paths, per_image, seed, dev)
    centroids = kmeans(features, model.aggregator.clusters, niter, seed)
    alpha = model.aggregator.init_from_clusters(centroids, features)
    info = {"netvlad_init": {"dataset": dataset, "split": split, "images": len(paths), "features": len(features),
                             "clusters": model.aggregator.clusters, "alpha": alpha, "niter": niter, "seed": seed,
                             "encoder_weights": weights}}
    path = save_checkpoint(model.cpu(), out, extra=info)
    click.echo(f"{len(features)} local features from {len(paths)} images → {model.aggregator.clusters} clusters, "
               f"alpha {alpha:.2f}; wrote {path}")
    click.echo(f"use it with: --method {method} --weights {out}")

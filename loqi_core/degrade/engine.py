"""The degradation engine behind ``loqi degrade``: what a degradation costs (bytes, bits per pixel, PSNR), or a
degraded copy of a dataset, as a Python API (``measure_degradations``, ``degrade_dataset``).

Images are fed to a degradation exactly as the evaluation engine feeds them (``loqi_core.evaluation.engine``): a
temporal degradation (video codec) gets each capture-order sequence as one stream and every other image as a
one-frame stream; any other degradation gets one image per call. The per-call seed is also the engine's, so
``degrade_dataset("jpeg10", ...)`` writes the very images ``loqi eval --degrade jpeg10`` sees.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

from loqi_core.errors import ConfigError
from loqi_core.util.logs import RunLog, log
from loqi_core.util.progress import progress
from loqi_core.util.rundir import LOCK_FILE, locked

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.data.sets import ImageList, TestSet, TrainSet
    from loqi_core.degrade.base import Degradation
    from loqi_core.hooks.manager import Plugins

MANIFEST = "loqi-degrade.json"
PROGRESS = "loqi-degrade.progress.jsonl"
LOSSLESS_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".webp")
SIDE_FILE_LIMIT = 64 * 2**20
"""Non-image files larger than this (archives, caches) are not copied into a degraded copy."""


# ---- measuring ------------------------------------------------------------------------------------


@dataclass
class SpecStats:
    """What one spec did to a set of images: counts, bytes, pixels and squared error against the clean images."""

    spec: str
    images: int = 0
    coded_images: int = 0
    nbytes: int = 0
    sent_pixels: int = 0
    """Pixels of the degraded images as sent (their own size)."""
    coded_pixels: int = 0
    """Clean-image pixels of the images whose degradation reported a byte count."""
    clean_pixels: int = 0
    squared_error: float = 0.0
    """Sum over every clean pixel and channel of (clean − degraded)², degraded resized to the clean size."""
    sent_sizes: Counter = field(default_factory=Counter)
    clean_sizes: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    protocol: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """What the degradation warned about while running (e.g. a resize that enlarges)."""
    sampled: dict[str, dict[str, "SpecStats"]] = field(default_factory=dict)
    """A sampled spec (``jpeg[5:50]``): per range or choice, the same figures per drawn value (or bin of values)."""

    def add(self, clean: "torch.Tensor", degraded: "torch.Tensor", nbytes: int | None) -> None:
        """Account for one image pair (uint8 3×H×W each, degraded possibly at another size)."""
        import torch.nn.functional as F

        self.images += 1
        h, w = clean.shape[-2:]
        dh, dw = degraded.shape[-2:]
        self.clean_sizes[(w, h)] += 1
        self.sent_sizes[(dw, dh)] += 1
        self.sent_pixels += dh * dw
        self.clean_pixels += h * w
        if nbytes is not None:
            self.coded_images += 1
            self.nbytes += int(nbytes)
            self.coded_pixels += h * w
        d = degraded.detach().cpu().float()
        if (dh, dw) != (h, w):
            d = F.interpolate(d[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 255)
        self.squared_error += float((d - clean.float()).pow(2).sum())

    @property
    def bytes_per_image(self) -> float | None:
        return self.nbytes / self.coded_images if self.coded_images else None

    @property
    def bits_per_pixel(self) -> float | None:
        """Coded bits per pixel of the clean image: one denominator for every spec, whatever size it sends."""
        return 8 * self.nbytes / self.coded_pixels if self.coded_pixels else None

    @property
    def psnr(self) -> float:
        """PSNR in dB over all pixels and channels of all images (inf when nothing changed)."""
        mse = self.squared_error / max(1, 3 * self.clean_pixels)
        return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)

    @property
    def enlarged(self) -> bool:
        return self.sent_pixels > self.clean_pixels

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "images": self.images,
            "bytes_per_image": self.bytes_per_image,
            "bits_per_pixel": self.bits_per_pixel,
            "psnr_db": None if math.isinf(self.psnr) else round(self.psnr, 3),
            "sent_size": _size_text(self.sent_sizes),
            "clean_size": _size_text(self.clean_sizes),
            "enlarged": self.enlarged,
            "images_per_second": round(self.images / self.seconds, 2) if self.seconds else None,
            "protocol": self.protocol,
            "warnings": self.warnings,
            **({"sampled": {key: {label: b.as_dict() for label, b in by_bin.items()} for key, by_bin in self.sampled.items()}}
               if self.sampled else {}),
        }  # fmt: skip


def _size_text(sizes: Counter) -> str:
    """``64×32``, or the commonest size and how many others there are."""
    if not sizes:
        return "-"
    (w, h), _ = sizes.most_common(1)[0]
    return f"{w}×{h}" + (f" (+{len(sizes) - 1} other sizes)" if len(sizes) > 1 else "")


# ---- feeding the degradation ----------------------------------------------------------------------


def truncate(images: "ImageList", limit: int | None) -> "ImageList":
    """The first ``limit`` images of a list, with its sequences cut to them (order kept)."""
    from loqi_core.data.sets import ImageList

    if limit is None or limit >= len(images):
        return images
    sequences = None
    if images.sequences is not None:
        sequences = [[i for i in s if i < limit] for s in images.sequences]
        sequences = [s for s in sequences if s]
    positions = images.positions[:limit] if images.positions is not None else None
    return ImageList(images.paths[:limit], positions, sequences)


def degrade_list(
    images: "ImageList",
    degradation: "Degradation",
    *,
    seed: int = 0,
    device: str = "cpu",
    skip: Callable[[list[int]], bool] | None = None,
) -> Iterator[tuple[list[int], list["torch.Tensor"], list["torch.Tensor"], list[int | None], list[dict[str, Any]]]]:
    """Yield ``(indices, clean, degraded, nbytes, draws)`` per degradation call, fed as the evaluation engine feeds it.

    ``draws`` says, per image, what a sampled spec (``jpeg[5:50]``) drew; empty dicts for a fixed spec.

    ``skip(indices)`` true leaves a unit out without reading it (resuming a copy).
    """
    from loqi_core.data.images import read_image
    from loqi_core.degrade.base import degradation_units, sample_seed

    for unit in degradation_units(images, degradation):
        if skip is not None and skip(unit):
            continue
        clean = [read_image(images.paths[i]) for i in unit]
        out = degradation([c.to(device) for c in clean], seed=sample_seed(seed, images.paths[unit[0]].name))
        if len(out.images) != len(unit):
            raise ConfigError(f'degradation "{degradation.spec}" returned {len(out.images)} images for {len(unit)}')
        nbytes = list(out.nbytes) if out.nbytes is not None else [None] * len(unit)
        draws = list(out.draws) if out.draws is not None else [{}] * len(unit)
        yield unit, clean, [img.cpu() for img in out.images], nbytes, draws


def image_lists(dataset: "TestSet | TrainSet", which: str, limit: int | None) -> list[tuple[str, "ImageList"]]:
    """The named image lists of a test set (database, queries) or a training set (train), each truncated."""
    from loqi_core.data.sets import TestSet

    if isinstance(dataset, TestSet):
        lists = [("database", dataset.database), ("queries", dataset.queries)]
        lists = [(n, images) for n, images in lists if which in ("all", n)]
    else:
        if which not in ("all", "train"):
            raise ConfigError(f"--images {which}: a training set has one image list; use --images all")
        lists = [("train", dataset.images)]
    if not lists:
        raise ConfigError(f"--images {which}: a test set has the image lists database and queries (or all)")
    return [(name, truncate(images, limit)) for name, images in lists]


def measure(
    spec: str,
    lists: list[tuple[str, "ImageList"]],
    *,
    seed: int,
    device: str,
    plugins: "Plugins | None" = None,
    sink: Callable[[str, "ImageList", list[int], list["torch.Tensor"], list[int | None]], None] | None = None,
    skip: Callable[[str, "ImageList", list[int]], bool] | None = None,
) -> SpecStats:
    """Degrade every image of ``lists`` with ``spec``; ``sink`` receives each unit's degraded images."""
    from loqi_core.degrade.base import temporal_note
    from loqi_core.degrade.grammar import parse_degradation
    from loqi_core.degrade.sampled import bin_label, bin_labels

    degradation = parse_degradation(spec, plugins)
    stats = SpecStats(spec)
    axes = getattr(degradation, "axes", [])
    for axis in axes:
        stats.sampled[axis.key] = {label: SpecStats(label) for label in bin_labels(axis)}
    total = sum(len(images) for _, images in lists)
    start = time.perf_counter()
    with progress(total=total, desc=spec, unit="img", leave=False) as bar, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        for name, images in lists:
            stats.protocol[name] = temporal_note(images, degradation)
            unit_skip = (lambda unit, n=name, i=images: skip(n, i, unit)) if skip is not None else None
            for unit, clean, degraded, nbytes, draws in degrade_list(images, degradation, seed=seed, device=device, skip=unit_skip):
                for c, d, b, drawn in zip(clean, degraded, nbytes, draws):
                    stats.add(c, d, b)
                    for axis in axes:
                        if axis.key in drawn:  # a range inside a choice is drawn only when its option is
                            stats.sampled[axis.key][bin_label(axis, drawn[axis.key])].add(c, d, b)
                if sink is not None:
                    sink(name, images, unit, degraded, nbytes)
                bar.update(len(unit))
    stats.seconds = time.perf_counter() - start
    stats.warnings = sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)})
    return stats


def _table(rows: list[SpecStats], first: str = "spec") -> list[str]:
    """Aligned text lines: one row per stats object, labelled by its ``spec``."""
    header = (first, "images", "sent size", "bytes/image", "bits/pixel", "PSNR dB", "images/s")
    body = []
    for s in rows:
        bpi, bpp = s.bytes_per_image, s.bits_per_pixel
        body.append((
            s.spec, str(s.images), _size_text(s.sent_sizes),
            "-" if bpi is None else f"{bpi:,.0f}", "-" if bpp is None else f"{bpp:.3f}",
            "-" if not s.images else "inf" if math.isinf(s.psnr) else f"{s.psnr:.2f}",
            f"{s.images / s.seconds:.0f}" if s.seconds else "-",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_table(rows: list[SpecStats]) -> str:
    """The report table, one row per spec, each sampled spec's histogram of what it drew, and how to read them."""
    lines = _table(rows)
    for s in rows:
        for key, by_bin in s.sampled.items():
            lines += ["", f"{s.spec}: images per value drawn for {key}"] + _table(list(by_bin.values()), "drawn")
    notes = [
        "bytes/image: coded bytes per image ('-': nothing encoded); bits/pixel: those bits per pixel of the clean",
        "image, whatever size is sent; PSNR: over all pixels of all images against the clean ones, an image sent",
        "at another size first resized to the clean size (bicubic, antialiased).",
    ]
    for s in rows:
        notes += [f"{s.spec}: {message}" for message in s.warnings]
        if s.enlarged and not s.warnings:
            notes.append(
                f"{s.spec}: ENLARGES the images ({_size_text(s.clean_sizes)} → {_size_text(s.sent_sizes)}): it adds pixels, "
                "so it degrades these images only through what comes after it"
            )
    protocols = {(k, v) for s in rows for k, v in s.protocol.items() if not v.startswith("not temporal")}
    notes += [f"{name}: {note}" for name, note in sorted(protocols)]
    return "\n".join(lines + [""] + notes)


# ---- writing a degraded copy ----------------------------------------------------------------------


def dataset_root(text: str, plugins: "Plugins", data_root: str | None) -> Path | None:
    """The folder a dataset string reads from (as ``load_dataset`` resolves it), or None when it has none."""
    from loqi_core.data.datasets import data_root as resolve_root

    name, _, path = text.partition(":")
    if path:
        return Path(path).expanduser()
    fields = plugins.dataset(name).params.model_fields
    if "root" not in fields:
        return None
    default = fields["root"].default
    if default is None:
        base = resolve_root(data_root)
        return base / name if base is not None else None
    return Path(default)


def _absolute(path: Path) -> Path:
    """An absolute path that does not follow symbolic links (an image linked from elsewhere stays where it is listed)."""
    return Path(os.path.abspath(path))


def layout_root(paths: list[Path], root: Path | None) -> Path:
    """The dataset root when every image lies under it, else the deepest folder holding all images."""
    listed = [_absolute(p) for p in paths]
    if root is not None:
        base = _absolute(root)
        if all(p.is_relative_to(base) for p in listed):
            return base
    return Path(os.path.commonpath([str(p.parent) for p in listed]))


def check_out_folder(out: Path, root: Path) -> None:
    """Refuse an --out inside the dataset being copied: the copy would grow the dataset it reads."""
    for a, b in ((_absolute(out), _absolute(root)), (out.resolve(), root.resolve())):
        if a.is_relative_to(b):
            raise ConfigError(f"--out {out} lies inside the dataset {root}; write the copy outside it")


def _save(image: "torch.Tensor", path: Path) -> None:
    """Write one uint8 image atomically; JPEG at quality 100 without chroma subsampling, the rest losslessly."""
    from PIL import Image

    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    suffix = path.suffix.lower()
    options: dict[str, Any] = {}
    if suffix in (".jpg", ".jpeg"):
        options = {"format": "JPEG", "quality": 100, "subsampling": 0}
    elif suffix == ".webp":
        options = {"format": "WEBP", "lossless": True}
    else:
        options = {"format": Image.registered_extensions().get(suffix, "PNG")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pil.save(tmp, **options)
    tmp.replace(path)


def _copy_side_files(root: Path, files: list[Path], out: Path) -> tuple[int, list[Path]]:
    """Copy the non-image files of every folder between ``root`` and the images (ground-truth CSVs and such).

    Only folders inside ``root`` are read, and a symbolic link is never followed (a link to an image or a file
    elsewhere brings nothing from there). Files over ``SIDE_FILE_LIMIT`` bytes (archives, caches) are left out
    and returned, so the caller can say so.
    """
    import shutil

    from loqi_core.data.images import IMAGE_SUFFIXES

    folders: set[Path] = set()
    for f in files:
        for folder in [_absolute(f).parent, *_absolute(f).parent.parents]:
            if not folder.is_relative_to(root) or folder.is_symlink():
                break
            folders.add(folder)
    copied, too_big = 0, []
    for folder in sorted(folders):
        if not folder.resolve().is_relative_to(root.resolve()):
            continue  # reached through a link out of the dataset
        for item in folder.iterdir():
            target = out / item.relative_to(root)
            if item.is_symlink() or not item.is_file() or item.suffix.lower() in IMAGE_SUFFIXES or target.exists():
                continue
            if item.stat().st_size > SIDE_FILE_LIMIT:
                too_big.append(item)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, target)
            copied += 1
    return copied, too_big


class CopyWriter:
    """Writes degraded images under ``out`` at their paths relative to ``root``, resumably.

    ``loqi-degrade.json`` records the spec, seed and dataset; ``loqi-degrade.progress.jsonl`` gets one line
    per finished degradation call, so a killed copy resumes with the calls it had not finished.
    """

    def __init__(self, out: Path, root: Path, settings: dict[str, Any], fmt: str) -> None:
        self.out, self.root, self.fmt = out, root, fmt
        self.done: dict[str, int | None] = {}
        manifest = out / MANIFEST
        if manifest.exists():
            previous = json.loads(manifest.read_text())
            if previous.get("settings") != settings:
                raise ConfigError(
                    f"{out} holds a degraded copy made with other settings ({previous.get('settings')}); "
                    "choose another --out or delete it"
                )
            if (out / PROGRESS).exists():
                for line in (out / PROGRESS).read_text().splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:  # a line cut short by a kill: its unit is redone
                        continue
                    self.done.update(zip(record["files"], record["nbytes"]))
        elif out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
            raise ConfigError(f"--out {out} exists and is not empty; choose a new folder")
        out.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({"settings": settings}, indent=2))
        self.settings = settings

    def target(self, path: Path) -> str:
        rel = _absolute(path).relative_to(self.root)
        return str(rel.with_suffix(".png") if self.fmt == "png" else rel)

    def is_done(self, paths: list[Path]) -> bool:
        return all(self.target(p) in self.done and (self.out / self.target(p)).exists() for p in paths)

    def write(self, paths: list[Path], images: list["torch.Tensor"], nbytes: list[int | None]) -> None:
        files = [self.target(p) for p in paths]
        for f, img in zip(files, images):
            _save(img, self.out / f)
        with open(self.out / PROGRESS, "a") as log:
            log.write(json.dumps({"files": files, "nbytes": nbytes}) + "\n")
        self.done.update(zip(files, nbytes))

    def finish(self, stats: SpecStats) -> Path:
        """Write the final manifest: settings, every file's coded bytes, and the figures of the images degraded
        by this invocation (``resumed_images`` were written by an earlier, interrupted one)."""
        manifest = self.out / MANIFEST
        figures = {**stats.as_dict(), "resumed_images": len(self.done) - stats.images}
        manifest.write_text(json.dumps({"settings": self.settings, "figures": figures, "nbytes": self.done}, indent=2))
        return manifest


# ---- the public API -------------------------------------------------------------------------------


@dataclass
class DegradeReport:
    """What ``measure_degradations`` found: one ``SpecStats`` per spec, and which images it degraded."""

    dataset: str
    split: str
    seed: int
    device: str
    counts: dict[str, int]
    """Images per image list (``database``, ``queries`` or ``train``), after ``limit``."""
    rows: list[SpecStats]

    def header(self) -> str:
        lists = ", ".join(f"{n} {c}" for n, c in self.counts.items())
        return f"{self.dataset} ({self.split}: {lists}), seed {self.seed}, device {self.device}"

    def table(self) -> str:
        return format_table(self.rows)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.rows]


@dataclass
class CopyResult:
    """What ``degrade_dataset`` wrote: the figures of the images it degraded, where, and what it left out."""

    stats: SpecStats
    """Figures of the images degraded by this call (an interrupted earlier call's images are not in them)."""
    out: Path
    root: Path
    """The folder whose layout the copy repeats (the dataset root, or the deepest folder holding every image)."""
    manifest: Path
    images: int
    """Images in the copy, including ``resumed`` ones."""
    resumed: int
    """Images already written by an earlier, interrupted call with the same settings."""
    side_files: int
    """Non-image files (ground truth) copied from the folders along the way."""
    too_big: list[Path]
    """Non-image files not copied because they exceed ``SIDE_FILE_LIMIT`` bytes."""
    reencoded_jpeg: bool
    """JPEG files were written at quality 100 (4:4:4): close to, not exactly, the degraded pixels."""


def _load_lists(
    dataset: str, split: str, images: str, limit: int | None, device: str, data_root: str | None, plugins: "Plugins | None"
) -> tuple["Plugins", list[tuple[str, "ImageList"]]]:
    """The plugins and the named image lists to degrade; the device is checked first."""
    from loqi_core.data.datasets import load_dataset
    from loqi_core.hooks.manager import get_plugins
    from loqi_core.util.devices import resolve_device

    resolve_device(device)  # a device this machine lacks: one clear line before any image is read
    plugins = plugins or get_plugins()
    data = load_dataset(dataset, split, root=data_root, plugins=plugins)  # type: ignore[arg-type]
    return plugins, image_lists(data, images, limit)


def measure_degradations(
    specs: list[str],
    dataset: str,
    *,
    split: Literal["test", "train"] = "test",
    images: Literal["all", "database", "queries", "train"] = "all",
    limit: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    data_root: str | None = None,
    plugins: "Plugins | None" = None,
) -> DegradeReport:
    """Degrade the images of ``dataset`` (``demo``, ``NAME``, ``NAME:PATH``, ``folder:PATH``) with each spec and
    measure bytes, bits per pixel and PSNR against the clean images; nothing is written."""
    plugins, lists = _load_lists(dataset, split, images, limit, device, data_root, plugins)
    rows = [measure(spec, lists, seed=seed, device=device, plugins=plugins) for spec in specs]
    return DegradeReport(dataset, split, seed, device, {n: len(i) for n, i in lists}, rows)


def degrade_dataset(
    spec: str,
    dataset: str,
    out: str | Path,
    *,
    split: Literal["test", "train"] = "test",
    images: Literal["all", "database", "queries", "train"] = "all",
    limit: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    fmt: Literal["keep", "png"] = "keep",
    data_root: str | None = None,
    plugins: "Plugins | None" = None,
) -> CopyResult:
    """Write a degraded copy of ``dataset`` under ``out``: every image at its path relative to the dataset root,
    plus the non-image files along the way, so ``NAME:OUT`` reads it; a killed copy resumes when called again.

    ``fmt="keep"`` keeps file names and formats (JPEG at quality 100, 4:4:4), ``"png"`` writes exact PNGs.
    """
    out = Path(out)
    plugins, lists = _load_lists(dataset, split, images, limit, device, data_root, plugins)
    paths = [p for _, image_list in lists for p in image_list.paths]
    root = layout_root(paths, dataset_root(dataset, plugins, data_root))
    check_out_folder(out, root)
    settings = {"spec": spec, "seed": seed, "dataset": dataset, "split": split, "images": images, "limit": limit,
                "format": fmt, "device": device}  # fmt: skip
    with RunLog("degrade") as runlog, locked(out):  # one writer per copy: a second copy into the same folder is refused
        writer = CopyWriter(out, root, settings, fmt)
        runlog.open(out)
        log.info(f"settings: {json.dumps(settings, sort_keys=True)} ({out / MANIFEST})")
        with runlog.stage("degrading"):
            stats = measure(
                spec, lists, seed=seed, device=device, plugins=plugins,
                sink=lambda name, il, unit, degraded, nbytes: writer.write([il.paths[i] for i in unit], degraded, nbytes),
                skip=lambda name, il, unit: writer.is_done([il.paths[i] for i in unit]),
            )  # fmt: skip
        with runlog.stage("copying other files"):
            side, too_big = _copy_side_files(root, paths, out)
        manifest = writer.finish(stats)
        log.info(format_table([stats]))
        log.info(f"wrote {stats.images} images under {out}; {len(paths) - stats.images} already there; {side} non-image files copied")
    reencoded = fmt == "keep" and any(p.suffix.lower() not in LOSSLESS_SUFFIXES for p in paths)
    return CopyResult(stats, out, root, manifest, len(paths), len(paths) - stats.images, side, too_big, reencoded)

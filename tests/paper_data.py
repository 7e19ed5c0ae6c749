"""Tiny data in the on-disk formats the paper's experiments read, for the reproduction tests.

GSV-Cities (``Dataframes/<City>.csv`` + ``Images/<City>/<name>.jpg``, JPEG files as the real ones), Pitts30k's
validation split and the test sets (gmberton's ``images/<split>/{database,queries}/@east@north@...``), Nordland
(the downloader's frame-indexed names).

Also a script entry point (``python tests/paper_data.py --kill-at-step N -- ARGS``) that runs ``loqi ARGS`` and
SIGKILLs the process in the middle of training step N, as a crash or an OOM kill would.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def scene(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A smooth random RGB image (h, w, 3): blocky noise upsampled, so JPEG has structure to keep."""
    h, w = size
    small = rng.integers(0, 256, (max(1, h // 4), max(1, w // 4), 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def noisy(rng: np.random.Generator, base: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    return np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)


def write_gsv_cities(root: Path, cities: tuple[str, ...] | None = None, places: int = 3, images: int = 4,
                     size: tuple[int, int] = (30, 40), seed: int = 0) -> Path:  # fmt: skip
    """GSV-Cities' layout: per city a CSV and a folder of JPEGs; places ~111 m apart (1e-3° of latitude), the images
    of a place within ~2 m (1e-5° steps), every image of a place a noisy copy of the place's scene."""
    from loqi_plugin_gsv_cities import CITIES_300x400
    from loqi_plugin_gsv_cities.reader import image_name

    rng = np.random.default_rng(seed)
    (root / "Dataframes").mkdir(parents=True, exist_ok=True)
    for c, city in enumerate(cities or CITIES_300x400):
        (root / "Images" / city).mkdir(parents=True, exist_ok=True)
        with open(root / "Dataframes" / f"{city}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid"])
            for place in range(places):
                base = scene(rng, size)
                for k in range(images):
                    lat, lon = 40.0 + c + place * 1e-3 + k * 1e-5, 10.0 + c
                    pano = f"p{place}-{k}_x"
                    w.writerow([place, 2010 + k, k + 1, 90 * k, city, lat, lon, pano])
                    name = image_name(city, place, 2010 + k, k + 1, 90 * k, repr(lat), repr(lon), pano)
                    Image.fromarray(noisy(rng, base)).save(root / "Images" / city / name, quality=95)
    return root


def write_split(root: Path, split: str, places: int = 6, size: tuple[int, int] = (30, 40), seed: int = 0,
                per_place: int = 1) -> Path:  # fmt: skip
    """gmberton's layout for one split: ``per_place`` database images per place (within 2 m), places 100 m apart, and
    a noisy query of each place."""
    rng = np.random.default_rng(seed)
    for part in ("database", "queries"):
        (root / "images" / split / part).mkdir(parents=True, exist_ok=True)
    for place in range(places):
        base = scene(rng, size)
        east, north = 585000.0 + place * 100.0, 4477000.0
        for k in range(per_place):
            image = base if k == 0 else noisy(rng, base)
            name = f"@{east + k * 0.5:.2f}@{north:.2f}@17@T@@@@@{place:04d}{'' if k == 0 else f'_{k}'}@.jpg"
            Image.fromarray(image).save(root / "images" / split / "database" / name)
        qe = east + rng.uniform(-5, 5)
        Image.fromarray(noisy(rng, base, 12)).save(root / "images" / split / "queries" / f"@{qe:.2f}@{north:.2f}@17@T@@@@@{place:04d}q@.jpg")
    return root


def write_nordland(root: Path, frames: int = 12, size: tuple[int, int] = (30, 40), seed: int = 3) -> Path:
    """Nordland as the downloader writes it: frame-indexed names, summer database, every other frame a query."""
    rng = np.random.default_rng(seed)
    for part in ("database", "queries"):
        (root / "images/test" / part).mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        img = scene(rng, size)
        name = f"@0@{i * 100:07.1f}@@@@@{i}@@@@@@@@.png"
        Image.fromarray(img).save(root / "images/test/database" / name)
        if i % 2 == 0:
            Image.fromarray(noisy(rng, img, 10)).save(root / "images/test/queries" / name)
    return root


def write_paper_data(root: Path, size: tuple[int, int] = (30, 40)) -> Path:
    """Everything ``loqi reproduce table2`` reads: GSV-Cities (12 cities × 3 places × 4 images), Pitts30k-val,
    MSLS, Nordland and Tokyo 24/7."""
    write_gsv_cities(root / "gsv-cities", size=size)
    write_split(root / "pitts30k", "val", size=size, seed=1)
    for k, name in enumerate(("msls", "tokyo247")):
        write_split(root / name, "test", size=size, seed=10 + k)
    write_nordland(root / "nordland", size=size)
    return root


def _main(argv: list[str]) -> None:
    """``--kill-at-step N -- ARGS``: ``loqi ARGS``, SIGKILLed in the middle of the N-th training step (0-based)."""
    import os
    import signal

    from loqi_core.cli import main
    from loqi_core.training.engine import _Trainer

    kill_at = int(argv[argv.index("--kill-at-step") + 1])
    args = argv[argv.index("--") + 1 :]
    step = _Trainer._step

    def dying_step(self, batch):
        if batch["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, batch)

    _Trainer._step = dying_step  # type: ignore[method-assign]
    sys.argv = ["loqi", *args]
    main()


if __name__ == "__main__":
    _main(sys.argv[1:])

"""Regenerate the bundled demo images from the Nordland 64×32 copy (run by hand; not part of the package).

    python plugins/loqi-plugin-demo/build_data.py /path/to/nordland_64x32

Frame i (file images-<10·i>.png) gets the position (0, 10·i) m, so the 25 m test radius accepts ±2 frames.
Test: summer = database, winter = queries, for TEST_BLOCKS; train: both seasons of TRAIN_BLOCKS (disjoint).
Each block is one subfolder, so each is one sequence in frame order. Images are stored as 8-bit grey PNG
(the source frames are grey stored as RGB, so this is lossless).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from PIL import Image

TEST_BLOCKS = ((300, 400), (1500, 1600), (2700, 2800))
TRAIN_BLOCKS = ((700, 800), (1900, 2000), (3100, 3200))
OUT = Path(__file__).parent / "loqi_plugin_demo" / "data"


def name(frame: int) -> str:
    return f"@0.00@{10 * frame:.2f}@@@@@{frame}@@@@@@@@.png"


def main(source: Path) -> None:
    if (OUT / "images").exists():
        shutil.rmtree(OUT / "images")
    jobs = []
    for part, (a, b) in enumerate(TEST_BLOCKS, start=1):
        jobs += [("summer", OUT / f"images/test/database/part{part}", f) for f in range(a, b)]
        jobs += [("winter", OUT / f"images/test/queries/part{part}", f) for f in range(a, b)]
    for part, (a, b) in enumerate(TRAIN_BLOCKS, start=1):
        for season in ("summer", "winter"):
            jobs += [(season, OUT / f"images/train/{season}/part{part}", f) for f in range(a, b)]
    for season, folder, frame in jobs:
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(source / season / f"images-{10 * frame:05d}.png").convert("L").save(folder / name(frame), optimize=True)
    print(f"wrote {len(jobs)} images under {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

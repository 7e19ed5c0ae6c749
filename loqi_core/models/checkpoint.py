"""loqi checkpoints: ``model.safetensors`` + ``model.json`` (what the model is), written atomically, and the
digests that vouch for every file of a checkpoint folder. Loading a model and resuming a training both check here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loqi_core.errors import WeightsError
from loqi_core.models.weights import load_state_dict, sha256_of
from loqi_core.util.fileio import save_safetensors, write_text

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

DIGEST_FILE = "digests.json"
CHECKPOINT_FILE = "model.safetensors"


def save_checkpoint(model: "nn.Module", path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``model.json`` (what the model is) atomically; returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors(state, path, metadata={"method": model.info["method"]})
    write_text(path.with_suffix(".json"), json.dumps({**model.info, **(extra or {})}, indent=2))
    return path


def checkpoint_file(path: str | Path) -> Path:
    """The weights file of a loqi checkpoint, with its sidecar: the ``.safetensors`` file, its folder, a training
    directory (``loqi distill``: ``checkpoints/final``) or a run directory (``loqi run``: its ``distill/`` student).
    ``build_model(weights=...)`` and every command's ``--weights`` resolve through here."""
    path = Path(path)
    if path.is_dir():
        final = Path("checkpoints", "final", CHECKPOINT_FILE)
        candidates = [path / CHECKPOINT_FILE, path / final, path / "distill" / final]
        found = next((c for c in candidates if c.exists()), None)
        students = sorted(p.name for p in path.glob("distill-*") if (p / "checkpoints" / "final").is_dir())
        if found is None and students:  # a sweep: one student per loss
            options = ", ".join(str(path / s) for s in students)
            raise WeightsError(f"{path} is a sweep with one student per loss; pass one of them as weights: {options}")
        path = found or candidates[0]
    sidecar = path.with_suffix(".json")
    if not path.exists() or not sidecar.exists():
        raise WeightsError(f"no loqi checkpoint at {path} (expected {path.name} and {sidecar.name})")
    return path


def load_checkpoint(model: "nn.Module", path: str | Path, *, verified: bool = False) -> dict[str, Any]:
    """Load a loqi checkpoint (file or run directory) into ``model``; refuses one of another method or a damaged one.
    ``verified``: the caller has already checked the checkpoint's digests (a resume checks every file at once)."""
    path = checkpoint_file(path)
    sidecar = path.with_suffix(".json")
    if not verified and (path.parent / "digests.json").exists():  # a training checkpoint: files checked by digest
        reason = verify(path.parent, required=(path.name, sidecar.name))
        if reason is not None:
            raise WeightsError(f"checkpoint {path.parent} is damaged: {reason}")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{sidecar}: unreadable checkpoint description ({type(exc).__name__}: {exc})") from None
    for key in ("encoder", "aggregator"):
        if meta.get(key) != model.info[key]:
            raise WeightsError(
                f"{path} is a checkpoint of {key} \"{meta.get(key)}\" (method \"{meta.get('method')}\"), "
                f"but the model uses {key} \"{model.info[key]}\""
            )
    try:
        state = load_state_dict(path)
    except WeightsError:
        raise
    except Exception as exc:  # a truncated or garbled safetensors file
        raise WeightsError(f"{path}: unreadable weights ({type(exc).__name__}: {exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit the model: {str(exc)[:2000]}") from None
    model.info["weights"] = str(path)
    return meta


LINEAGE = "distilled_from"
"""The key of ``model.json`` where a distilled student records its teacher (written by ``loqi distill``)."""


def checkpoint_lineage(weights: str | Path) -> dict[str, Any] | None:
    """The teacher a loqi checkpoint says its student was distilled from (``{"fingerprint", "method", "weights"}``:
    the teacher's model fingerprint, as ``loqi eval`` and ``loqi index build`` compute it), or None for weights that
    are no loqi checkpoint (a variant name, an official file) and for a checkpoint trained without a teacher."""
    path = Path(weights)
    if not (path.is_dir() or path.suffix == ".safetensors"):
        return None
    try:
        meta = json.loads(checkpoint_file(path).with_suffix(".json").read_text())
    except (OSError, ValueError, WeightsError):
        return None
    lineage = meta.get(LINEAGE) if isinstance(meta, dict) else None
    if not isinstance(lineage, dict) or not isinstance(lineage.get("fingerprint"), str):
        return None
    return lineage


def write_digests(folder: Path) -> None:
    """Record the sha256 and size of every file in ``folder`` (written last, so it vouches for the others)."""
    files = {p.name: {"sha256": sha256_of(p), "size": p.stat().st_size} for p in sorted(folder.iterdir()) if p.is_file() and p.name != DIGEST_FILE}
    (folder / DIGEST_FILE).write_text(json.dumps({"files": files}, indent=1))


def verify(ckpt: Path, required: tuple[str, ...] = ()) -> str | None:
    """Why ``ckpt`` is not intact (a missing, garbled or altered file, or one of ``required`` not listed), or None
    when every digest matches."""
    try:
        files = json.loads((ckpt / DIGEST_FILE).read_text())["files"]
    except FileNotFoundError:
        return f"no {DIGEST_FILE} (cut short, or written by a loqi older than digests)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{DIGEST_FILE} is unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(files, dict) or not all(isinstance(r, dict) for r in files.values()):
        return f"{DIGEST_FILE} is unreadable (its files are not a mapping of name to size and sha256)"
    for name in required:
        if name not in files:
            return f"{name} is not listed in {DIGEST_FILE}"
    for name, record in files.items():
        path = ckpt / name
        if name in ("", ".", "..") or "/" in name or "\\" in name:  # a record never points outside its folder
            return f"{DIGEST_FILE} lists {name!r}, which is not a file of the checkpoint"
        if not path.is_file() or path.is_symlink():
            return f"{name} is missing (or not a regular file)"
        if path.stat().st_size != record.get("size"):
            return f"{name} has {path.stat().st_size} bytes, {record.get('size')} were written (truncated?)"
        if sha256_of(path) != record.get("sha256"):
            return f"{name} does not match its sha256 (the file was altered or damaged)"
    return None

"""The validation curves of a run's trainings (``distill.val``): gathered from their summary.json, drawn in one plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def training_curves(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``{training folder: curve}`` of every validated training under ``run_dir`` (``distill/``, ``distill-<loss>/``,
    ``finetune/``), or of ``run_dir`` itself when it is a training directory."""
    curves = {}
    for summary in sorted([run_dir / "summary.json", *run_dir.glob("*/summary.json")]):
        if summary.exists():
            data = json.loads(summary.read_text())
            if data.get("validation"):
                curves[summary.parent.name if summary.parent != run_dir else data["mode"]] = {
                    **data["validation"], "select": data.get("select"), "steps": data.get("steps")}
    return curves


def write_validation_plot(run_dir: Path, curves: dict[str, dict[str, Any]] | None = None) -> Path | None:
    """``run_dir/validation.png`` of the run's validation curves; None (nothing written) without any."""
    from loqi_core.report.plot import curve_chart

    curves = training_curves(run_dir) if curves is None else curves
    if not curves:
        return None
    path = run_dir / "validation.png"
    curve_chart(curves, f"validation - {run_dir.name}").save(path)
    return path


def curve_line(name: str, curve: dict[str, Any]) -> str:
    """One line for a report: where the best validation was and which student the run kept."""
    kept = "the run's student" if curve.get("select") == "best" else "the last step's student is the run's"
    return (f"validation of {name}: {curve['metric']} at steps {', '.join(str(s) for s, _ in curve['points'])}; best "
            f"{curve['best']:.4g} at step {curve['best_step']} of {curve.get('steps')} ({kept})")

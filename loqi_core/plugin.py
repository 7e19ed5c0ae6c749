"""The front door for plugin authors: everything a plugin may import from loqi, in one module that stays stable.

    from loqi_core.plugin import hookimpl, EncoderSpec, AggregatorSpec, Params, Preprocess, WeightsSpec

A plugin imports from here, from the Python API (``from loqi_core import build_model, load_dataset, ...``) and, in
its tests, from the conformance kit (``loqi_core.testing``); every other module of ``loqi_core`` is internal and
may move between releases. Names import on first use, so a plugin module that imports from here stays free of
torch. docs/plugin-guide.md says what each group is for; docs/architecture.md where each name lives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loqi_core.util.lazy import lazy_exports

_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "the contract: hooks, the specs a plugin registers, the loaded plugin set": {
        "loqi_core.hooks.hookspecs": ("hookimpl",),
        "loqi_core.hooks.specs": (
            "Params", "NoParams", "Preprocess", "WeightsSpec", "MethodProtocol", "EncoderSpec", "AggregatorSpec",
            "DegradationSpec", "LossSpec", "DatasetSpec", "IMAGENET_MEAN", "IMAGENET_STD",
        ),
        "loqi_core.hooks.manager": ("Plugins", "get_plugins"),
    },
    "errors a plugin raises (the CLI prints their message, without a traceback)": {
        "loqi_core.errors": ("LoqiError", "ConfigError", "DataError", "WeightsError", "UnknownNameError", "PluginLoadError"),
    },
    "degradations: the base class a factory returns, and how protocols rename a spec": {
        "loqi_core.degrade.base": ("Degradation", "Degraded", "Identity", "sample_seed"),
        "loqi_core.protocol": ("protocol_degrade",),
    },
    "losses: what one training step hands every loss": {
        "loqi_core.losses.terms": ("DistillBatch",),
    },
    "datasets: image and dataset types, decoding, and the folder readers behind every built-in dataset": {
        "loqi_core.data.sets": ("ImageList", "TestSet", "TrainSet"),
        "loqi_core.data.images": ("IMAGE_SUFFIXES", "read_image", "decode_image", "probe_image", "ImageHeader",
                                  "UnreadableImageError", "ImageTooLargeError"),
        "loqi_core.data.folder_dataset": ("FolderTestParams",),
        "loqi_core.data.folders": (
            "read_protocol_test_set", "read_test_folder", "read_train_folder", "read_image_list", "group_places",
            "validate_files", "SKIP_HINT",
        ),
        "loqi_core.data.datasets": ("ProtocolMismatchWarning",),
    },
    "models: the composed model, preprocessing, checkpoints, pretrained weights, shared layers": {
        "loqi_core.models.model": ("VPRModel",),
        "loqi_core.models.preprocess": ("preprocess_images", "preprocess_sizes"),
        "loqi_core.models.checkpoint": ("save_checkpoint", "load_checkpoint", "checkpoint_lineage"),
        "loqi_core.models.weights": ("fetch_weights", "load_state_dict", "unwrap_state_dict", "sha256_of"),
        "loqi_core.models.layers": ("GeM",),
    },
    "services: progress bars, devices, loader workers, leftovers of killed writers": {
        "loqi_core.util.progress": ("progress",),
        "loqi_core.util.rundir": ("writer_tag", "remove_abandoned"),
        "loqi_core.util.devices": ("resolve_device",),
        "loqi_core.util.cpus": ("loader_workers",),
    },
    "for command and serving plugins: run configs from flags, extraction, descriptor cache, search, sequences": {
        "loqi_core.config": ("RunConfig", "resolve_run_config"),
        "loqi_core.commands.options": ("common_options", "config_from_flags", "take_deprecated"),
        "loqi_core.evaluation.engine": ("extract", "ExtractStats", "encode_batch", "use_bf16", "model_versions"),
        "loqi_core.evaluation.cache": ("EvalCache", "model_fingerprint"),
        "loqi_core.evaluation.search": ("search", "search_flat_index", "IVFPQParams", "build_ivfpq", "ivfpq_settings", "refine"),
        "loqi_core.evaluation.sequence": (
            "SequenceParams", "SequenceStream", "Traverses", "similarity_matrix", "sequence_search", "top_k",
        ),
    },
}  # fmt: skip
"""What the front door offers, by purpose: module → the names it contributes."""

_EXPORTS = {name: module for group in _GROUPS.values() for module, names in group.items() for name in names}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs (a test keeps this list equal to _GROUPS)
    from loqi_core.commands.options import common_options, config_from_flags, take_deprecated
    from loqi_core.config import RunConfig, resolve_run_config
    from loqi_core.data.datasets import ProtocolMismatchWarning
    from loqi_core.data.folder_dataset import FolderTestParams
    from loqi_core.data.folders import (
        SKIP_HINT,
        group_places,
        read_image_list,
        read_protocol_test_set,
        read_test_folder,
        read_train_folder,
        validate_files,
    )
    from loqi_core.data.images import (
        IMAGE_SUFFIXES,
        ImageHeader,
        ImageTooLargeError,
        UnreadableImageError,
        decode_image,
        probe_image,
        read_image,
    )
    from loqi_core.data.sets import ImageList, TestSet, TrainSet
    from loqi_core.degrade.base import Degradation, Degraded, Identity, sample_seed
    from loqi_core.errors import ConfigError, DataError, LoqiError, PluginLoadError, UnknownNameError, WeightsError
    from loqi_core.evaluation.cache import EvalCache, model_fingerprint
    from loqi_core.evaluation.engine import ExtractStats, encode_batch, extract, model_versions, use_bf16
    from loqi_core.evaluation.search import IVFPQParams, build_ivfpq, ivfpq_settings, refine, search, search_flat_index
    from loqi_core.evaluation.sequence import (
        SequenceParams,
        SequenceStream,
        Traverses,
        sequence_search,
        similarity_matrix,
        top_k,
    )
    from loqi_core.hooks.hookspecs import hookimpl
    from loqi_core.hooks.manager import Plugins, get_plugins
    from loqi_core.hooks.specs import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        AggregatorSpec,
        DatasetSpec,
        DegradationSpec,
        EncoderSpec,
        LossSpec,
        MethodProtocol,
        NoParams,
        Params,
        Preprocess,
        WeightsSpec,
    )
    from loqi_core.losses.terms import DistillBatch
    from loqi_core.models.checkpoint import checkpoint_lineage, load_checkpoint, save_checkpoint
    from loqi_core.models.layers import GeM
    from loqi_core.models.model import VPRModel
    from loqi_core.models.preprocess import preprocess_images, preprocess_sizes
    from loqi_core.models.weights import fetch_weights, load_state_dict, sha256_of, unwrap_state_dict
    from loqi_core.protocol import protocol_degrade
    from loqi_core.util.cpus import loader_workers
    from loqi_core.util.devices import resolve_device
    from loqi_core.util.progress import progress
    from loqi_core.util.rundir import remove_abandoned, writer_tag

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

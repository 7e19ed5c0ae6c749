"""Pydantic models for every run, loadable from TOML or YAML, with ``section.key=value`` overrides.

Precedence, lowest first: these defaults, the method's ``run_defaults``, the config file, CLI flags.
A typo or a bad value is reported as the field path and the reason (``distill.lr: ...``), never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loqi_core.errors import ConfigError
from loqi_core.hooks.specs import check_image_size
from loqi_core.util.devices import check_device_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04, ROS 2 Humble): the same parser from PyPI
    import tomli as tomllib


SEED_MAX = 2**63 - 1
LR_MAX = 1e10
"""Larger learning rates overflow float32 inside the optimizer (a smaller absurd one is caught as a non-finite loss)."""


def check_recall(values: list[int]) -> list[int]:
    """The recall@N values, sorted and unique; the same rule for ``--recall``, ``eval.recall`` and ``-s``."""
    if not values:
        raise ValueError("give at least one N, e.g. [1, 5, 10]")
    if min(values) < 1:
        raise ValueError(f"every N must be at least 1, got {list(values)}")
    return sorted(set(values))


def check_levels(levels: list[str]) -> list[str]:
    """Degradation levels, each a spec: an empty one would be evaluated clean and reported as degraded."""
    for i, level in enumerate(levels, 1):
        if not level.strip():
            raise ValueError(f"level {i} of {levels} is empty: give one spec per level, e.g. jpeg10,qp40 (none for clean)")
    return levels


def check_spec(spec: str) -> str:
    """A degradation spec that is not blank (``none`` names the images as they are)."""
    if not spec.strip():
        raise ValueError('the degradation is empty: write "none" for the images as they are, or a spec such as jpeg10')
    return spec


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelConfig(Section):
    """Which model: a method, or an encoder and aggregator mixed, and its weights."""

    method: str | None = None
    encoder: str | None = None
    aggregator: str | None = None
    encoder_params: dict[str, Any] = Field(default_factory=dict)
    aggregator_params: dict[str, Any] = Field(default_factory=dict)
    weights: str = Field("default", description='"default", a variant ("official"), "random", or a file/run dir')
    image_size: tuple[int, int] | None = Field(None, description="(height, width) overriding the method's input size")
    preprocess: dict[str, Any] | None = Field(
        None, description="the model's input preprocessing as resolved from the method, the protocol and image_size "
        "(written by every run, so config.json shows what the model was fed; not a setting: a value that differs is refused)"
    )

    @field_validator("image_size")
    @classmethod
    def _bounded_size(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        return check_image_size(size)


class DistillConfig(Section):
    """Teacher/student training; defaults are the paper's (reference code) unless a method overrides them."""

    train: str = Field("demo", description="training dataset: NAME or NAME:PATH (folder:PATH for your own images)")
    loss: str | None = Field(None, description='loss expression, e.g. "ickd+0.5*mse+triplet"; None = method default')
    loss_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    lr: float = Field(1e-6, gt=0, le=LR_MAX)
    weight_decay: float = Field(0.0, ge=0)
    gamma: float = Field(0.99999, gt=0, le=1, description="ExponentialLR factor, stepped every iteration")
    schedule: Literal["exponential", "cosine"] = Field(
        "exponential", description="learning rate over the steps: exponential (× gamma every step, the reference's) or "
        "cosine (from lr down to 0 at the last step)",
    )  # fmt: skip
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from lr/(warmup_steps+1) to lr over the first steps")
    ema: float | None = Field(
        0.95, gt=0, lt=1, description="exponential moving average of the student's weights with this decay per step; "
        "the average is the run's student, validated and saved (0.95: the gain's spread over seeds halved, "
        "docs/distillation.md). None = the weights of the last step (--protocol paper: the authors kept those)",
    )  # fmt: skip
    clip_grad_norm: float | None = Field(1.0, gt=0)
    places_per_batch: int = Field(6, ge=1)
    images_per_place: int = Field(4, ge=1)
    batch_size: int = Field(24, ge=1, description="images per batch for label-free training sets")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="train exactly this many steps (cycling epochs); None = epochs")
    trainable: list[str] | None = Field(None, description="parameter-name prefixes to train; None = the method's")
    view_size: tuple[int, int] | Literal["native"] | None = Field(
        None, description="(height, width) of every training view, the scale at which the student meets the degradation; "
        '"native" = each image as it is, no crop or resize (the authors\' 300x400 GSV-Cities files; needs augment off); '
        "None = the test sets' typical image size (loqi run), else the method's input size or the training images' typical size"
    )
    augment: bool = Field(True, description="random resized crop and flip, identical for the teacher's and the student's view")
    min_crop: float = Field(0.7, gt=0, le=1, description="augmentation: smallest crop side, as a share of the largest crop")
    mine: bool = Field(
        False, description="the authors' mined step (distillation only): each anchor of a place batch brings the image "
        "within 20 m its pretrained teacher finds most similar and 5 random images beyond 30 m of its group (city), "
        "mined once before training and cached; 6 places x 4 anchors x 7 = 168 images per step"
    )
    freeze_bn: bool = Field(True, description="keep batch-norm statistics of the student frozen (the reference lets them drift)")
    bn_scope: Literal["trainable", "all"] = Field(
        "trainable", description="with freeze_bn off, where batch-norm statistics drift: in trainable layers only, or in "
        "every layer, frozen ones included (the authors' model.train())"
    )
    dropout: bool = Field(False, description="keep dropout / drop-path active in the student (the reference does)")
    tf32: bool = Field(
        False, description="TF32 matrix products and convolutions on CUDA while training (the authors' setting)"
    )
    finetune_loss: str = Field(
        "multisimilarity", description="loss of `loqi finetune` (the no-teacher baseline): a metric-learning loss"
    )
    finetune_loss_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="params of the finetune loss's terms, over distill.loss_params (e.g. NetVLAD's "
        "own triplet margin √0.1 under --protocol paper)"
    )
    val: str | None = Field(
        None, description='validation: "heldout" (label-free: the distillation loss on distill.heldout training images '
        "kept out of training, lower is better) or a test set as --test takes it (NAME, NAME:PATH, pitts30k?split=val): R@1 "
        "of the student's degraded queries, higher is better. None = no validation",
    )  # fmt: skip
    val_every: int | None = Field(None, ge=1, description="validate every N training steps (and at the end)")
    val_parts: int | None = Field(
        None, ge=1, description="or: N evenly spaced validations per epoch (the authors: 6); with neither, 6"
    )
    val_database: Literal["teacher", "student"] = Field(
        "student", description="labelled validation sets: who encodes the database. teacher: the frozen teacher, clean "
        "(the authors' validation; a map the teacher indexed); student: the student, degraded (the paper's test protocol)",
    )  # fmt: skip
    heldout: int = Field(64, ge=1, description='val="heldout": training images held out (evenly spaced; whole places '
                         "when the set has places), never trained on")  # fmt: skip
    select: Literal["best", "last"] = Field(
        "last", description="which student becomes the run's (checkpoints/final): the best validated one or the last; "
        "best when distill.val is set and this is not given",
    )  # fmt: skip
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="step checkpoints kept on disk (the final one is always kept)")
    log_every: int = Field(10, ge=1, description="steps between host syncs: loss check, CSV rows, progress bar")
    num_workers: int | None = Field(None, ge=0, description="loader processes; None = fit the CPUs the process may use")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA, fp32 on CPU")
    channels_last: Literal["auto", "on", "off"] = Field("auto", description="auto = on for CNN encoders on CUDA")
    tensorboard: bool | None = Field(None, description="log to TensorBoard: unset = when the tensorboard package is "
                                     "installed, silently; true = also warn (once) when it is not; false = never")

    @model_validator(mode="after")
    def _native_views(self) -> "DistillConfig":
        """Native views are the images as they are: a random crop and flip would change them."""
        if self.view_size == "native" and self.augment:
            raise ValueError('view_size "native" keeps every image as it is: set augment to false (--no-augment)')
        return self

    @model_validator(mode="after")
    def _validation(self) -> "DistillConfig":
        """One validation rhythm at most; a checkpoint chosen by validation needs a validation."""
        if self.val_every is not None and self.val_parts is not None:
            raise ValueError("give val_every (steps) or val_parts (per epoch), not both")
        if self.val is not None and "select" not in self.model_fields_set:
            self.select = "best"
        if self.select == "best" and self.val is None:
            raise ValueError('select "best" needs a validation: set val ("heldout" or a test set, e.g. --val heldout)')
        return self


class EvalConfig(Section):
    """Recall@N evaluation (the paper's protocol unless ``clean_database``)."""

    test: list[str] = Field(default_factory=lambda: ["demo"], description="test datasets: NAME or NAME:PATH")
    degrade: list[str] = Field(
        default_factory=list, description="evaluate at each of these degradations, a row per level; empty = the run's degrade"
    )
    recall: list[int] = Field(default_factory=lambda: [1, 2, 5, 10])
    positive_radius: float = Field(25.0, gt=0, allow_inf_nan=False, description="metres: a database image this close is a positive")
    clean_database: bool = Field(False, description="degrade only the queries (default: database and queries)")
    database_weights: str | None = Field(
        None, description='encode the database with these weights ("default": the method\'s pretrained ones, a variant, '
        "a run directory or a file) and the queries with the model under test; None = the model under test (loqi run's "
        '"distilled queries vs pretrained database" row: the teacher)',
    )  # fmt: skip
    index: Literal["auto", "flat", "torch", "ivfpq"] = Field(
        "auto", description="search: auto (torch top-k on CUDA, else flat), flat (FAISS exact, CPU), torch, ivfpq"
    )
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="seed of the test images' degradation (sampled specs such as jpeg[5:50]); "
        "None = the run's seed. loqi run --seeds pins it to the first seed: every seed's student meets the same queries",
    )  # fmt: skip
    batch_size: int = Field(32, ge=1)
    num_workers: int | None = Field(None, ge=0, description="decode/degrade processes; None = fit the CPUs the process may use")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA, fp32 on CPU")
    top_k: int = Field(10, ge=1, description="ranks kept per query in the predictions CSV (at least max recall N)")
    cache_dir: Path | None = Field(None, description="evaluation cache root; default $LOQI_CACHE or ~/.cache/loqi")
    cache: bool = Field(True, description="reuse cached degraded images and descriptors (each checked by size and sha256)")
    cache_images: bool = Field(True, description="also cache degraded images (lossless PNG shards), not only descriptors")
    ivf_nlist: int | None = Field(None, ge=1, description="IVF-PQ coarse cells; None = about 4*sqrt(database size)")
    ivf_m: int | None = Field(None, ge=1, description="IVF-PQ sub-quantisers (must divide the dimension); None = auto")
    ivf_nprobe: int | None = Field(None, ge=1, description="IVF-PQ cells visited per query; None = auto")
    ivf_refine: int = Field(10, ge=0, description="IVF-PQ: re-rank the top refine*k exactly from the database on disk; 0 = off")
    grid_queries: int = Field(6, ge=0, description="queries drawn in the top-k image grids and activation maps; 0 = none")
    grid_select: Literal["spread", "first", "wrong", "changed"] = Field(
        "spread", description="which queries the grids and activation maps show: spread evenly, the first ones, those "
        "wrong at R@1, or those distillation changed at R@1 (fixed or broken against the pretrained model)",
    )  # fmt: skip
    grid_k: int = Field(5, ge=1, description="database images shown per query in the grids (its top k)")
    database: Path | None = Field(
        None, description="a folder of database images (gmberton's evaluator's --database_folder); with eval.queries, "
        "one more test set, the only one unless eval.test is given too"
    )
    queries: Path | None = Field(None, description="the folder of query images that goes with eval.database")
    save_descriptors: bool = Field(
        False, description="write database and query descriptors (.npy, float32, image names beside) per test set and row"
    )
    pairs: int = Field(0, ge=0, description="write hloc-style retrieval pairs, the K best database images per query; 0 = none")
    sequence: int = Field(
        0, ge=0, le=10_000, description="also score each query by sequence matching (SeqSLAM) over the L frames ending "
        "at it, the paper's d_s; 0 = off; test sets with capture order only (docs/evaluation.md#sequence-matching)",
    )  # fmt: skip
    sequence_window: int = Field(10, ge=2, description="SeqSLAM's R_window: database frames of the contrast enhancement")
    sequence_v_min: float = Field(0.8, gt=0, description="SeqSLAM's V_min: slowest line, in database frames per query frame")
    sequence_v_max: float = Field(1.2, gt=0, description="SeqSLAM's V_max: fastest line")
    sequence_v_step: float = Field(0.1, gt=0, description="SeqSLAM's V_step: step between the velocities searched")
    sequence_rate: float | None = Field(
        None, gt=0, description="nominal database frames per query frame; None = database size / number of queries "
        "(two traverses of one route)",
    )  # fmt: skip

    @field_validator("recall")
    @classmethod
    def _recall(cls, values: list[int]) -> list[int]:
        return check_recall(values)

    @field_validator("degrade")
    @classmethod
    def _levels(cls, levels: list[str]) -> list[str]:
        return check_levels(levels)

    @model_validator(mode="after")
    def _velocities(self) -> "EvalConfig":
        if self.sequence_v_max < self.sequence_v_min:
            raise ValueError(f"sequence_v_max ({self.sequence_v_max}) is below sequence_v_min ({self.sequence_v_min})")
        return self

    @model_validator(mode="after")
    def _test_sets(self) -> "EvalConfig":
        """``database`` and ``queries`` come together and replace the default test set; some test set is left."""
        if (self.database is None) != (self.queries is None):
            given, missing = ("database", "queries") if self.queries is None else ("queries", "database")
            raise ValueError(f"{given} is set but {missing} is not: give both folders (--database DIR --queries DIR)")
        if self.database is not None and "test" not in self.model_fields_set:
            self.test = []
        if not self.test and self.database is None:
            raise ValueError("no test set: give test (--test NAME), or database and queries (--database DIR --queries DIR)")
        return self


class RunConfig(Section):
    """Everything one ``loqi`` run needs; written resolved into every run directory."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    degrade: str = Field("jpeg10", description='degradation spec, e.g. "jpeg10", "res360p+qp40"')
    distill: DistillConfig = Field(default_factory=DistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    protocol: Literal["upstream", "paper"] = Field(
        "upstream", description="upstream: each method as its release runs it; paper: as the LoQI-VPR authors ran it"
    )
    seed: int = Field(0, ge=0, le=SEED_MAX)
    device: str = Field("auto", description='"auto" (cuda when available), "cpu", "cuda", "cuda:1", "mps"')
    threads: int | None = Field(
        None, ge=1, le=4096,
        description="torch CPU threads; None = torch's default for evaluation, and for training the CPUs its loader "
        "workers leave but one (capped by OMP_NUM_THREADS). Recorded resolved in config.json: "
        "the same seed gives the same numbers only at the same thread count",
    )  # fmt: skip
    data_root: Path | None = Field(None, description="dataset root; default $LOQI_DATA")
    out: Path | None = Field(None, description="run directory; default a new folder under runs/")

    @field_validator("device")
    @classmethod
    def _device(cls, name: str) -> str:
        return check_device_name(name)

    @field_validator("degrade")
    @classmethod
    def _degrade(cls, spec: str) -> str:
        return check_spec(spec)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) file as a plain dict."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{path}: unknown config format (use .toml, .yaml or .yml)")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            import yaml

            data = yaml.safe_load(path.read_text())
    except Exception as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of fields and sections (model:, distill:, eval:), "
            f"not {'a list' if isinstance(data, list) else f'a single value ({data!r})'}"
        )
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(d, "distill.lr", 1e-5)`` sets ``d["distill"]["lr"]``."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    node[keys[-1]] = value


YAML11_BOOLEAN_WORDS = ("on", "off", "yes", "no", "y", "n")
"""Words YAML 1.1 turns into booleans; an override keeps them as text (``distill.channels_last=off``)."""


def parse_override(text: str) -> tuple[str, Any]:
    """``"distill.lr=1e-5"`` → ``("distill.lr", 1e-05)``; values parse as YAML scalars or lists."""
    import yaml

    if "=" not in text:
        raise ConfigError(f'override "{text}" must look like section.key=value')
    key, raw = text.split("=", 1)
    if raw.strip().lower() in YAML11_BOOLEAN_WORDS:  # keep the word: "off" is a valid choice of some fields, and
        return key.strip(), raw.strip()  # pydantic still reads on/off/yes/no as booleans where a bool is wanted
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def validate(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {_reason(e)}" for e in exc.errors()]
        if len(lines) == 1:
            raise ConfigError(f"invalid config: {lines[0]}") from None
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def _reason(error: Any) -> str:
    """Pydantic's message, without the "Value error, " prefix of loqi's own validators."""
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    return error["msg"]


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config(
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    method_defaults: dict[str, Any] | None = None,
) -> RunConfig:
    """Layer method defaults, a config file and CLI overrides (dotted keys; an explicit None clears a value)."""
    data: dict[str, Any] = {}
    for dotted, value in (method_defaults or {}).items():
        set_dotted(data, dotted, value)
    if file is not None:
        data = deep_merge(data, read_config_file(file))
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return validate(data)


def dump_config(config: RunConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2)


def resolve_run_config(file: str | Path | None = None, overrides: dict[str, Any] | None = None, plugins: Any = None) -> RunConfig:
    """Like ``resolve_config``, with the defaults of whichever method the file or flags name and of the protocol."""
    from loqi_core.hooks.manager import get_plugins
    from loqi_core.protocol import protocol_defaults, protocol_degrade

    first = resolve_config(file, overrides)
    name = first.model.method or first.model.encoder
    if name is None and first.protocol == "upstream":
        return first
    plugins = plugins or get_plugins()
    spec = None if name is None else plugins.encoder(name) if name in plugins.encoders else plugins.method(name)[0]
    defaults = protocol_defaults(first.protocol, spec)
    config = resolve_config(file, overrides, {**(spec.run_defaults if spec else {}), **defaults})
    levels = [protocol_degrade(level, config.protocol, plugins) for level in config.eval.degrade]
    update: dict[str, Any] = {"degrade": protocol_degrade(config.degrade, config.protocol, plugins),
                              "eval": config.eval.model_copy(update={"degrade": levels})}  # fmt: skip
    if spec is not None:  # recorded resolved: config.json shows what the model is fed
        preprocess = resolved_preprocess(spec, config)
        if config.model.preprocess not in (None, preprocess):
            raise ConfigError(
                f"model.preprocess is recorded, not set: {config.model.preprocess} differs from what {name} is fed under "
                f"protocol {config.protocol} ({preprocess}); leave it out (model.image_size sets the input size)"
            )
        update["model"] = config.model.model_copy(update={"preprocess": preprocess})
    return config.model_copy(update=update)


def resolved_preprocess(spec: Any, config: RunConfig) -> dict[str, Any]:
    """The input preprocessing ``build_model`` gives the method: its own, its protocol's, ``model.image_size``."""
    pp = spec.preprocess
    if config.protocol in spec.protocols and spec.protocols[config.protocol].preprocess is not None:
        pp = spec.protocols[config.protocol].preprocess
    if config.model.image_size is not None:
        pp = pp.model_copy(update={"size": tuple(config.model.image_size)})
    return pp.model_dump(mode="json")

"""``rswb train retrieval``: image-text retrieval with VSE++, CLIP-style, FISVL or KAMCL on a captioned image set.

Protocol: the caption set's train and test splits (precomp ``{split}_caps.txt`` / ``{split}_filename.txt``
or Karpathy JSON); a validation split is the set's own ``val`` split when it has one, else a seeded share of the
training **images** (with all their captions), and selects the epoch; the test split is scored once at the end.
Metrics: R@1/5/10 in both directions, mR and median ranks (:func:`rswb.metrics.retrieval_metrics_from_embeddings`),
every image against every caption of the split.

Two profiles, like the hash task:

* ``freeze_backbone=True, freeze_text=True`` (default, the CPU profile): the ImageNet EfficientNet-Lite0 and the
  pretrained MiniLM are frozen; their outputs (the image feature levels of
  :func:`rswb.models.retrieval.feature_levels`, MiniLM's token states) are computed once per image and caption,
  cached on disk (:mod:`rswb.data.features`, float16), and only the method's heads train, in seconds per epoch.
* ``freeze_backbone=False`` and/or ``freeze_text=False`` (a GPU profile): the encoders sit inside the model and
  fine-tune on images (random dihedral views as augmentation) and tokenised captions.

Scene labels (FISVL's affiliation and scene-adaptive terms) come from the Karpathy ``scene`` field, else from the
class folder of each image (UC Merced: ``Images/<class>/``). KAMCL's tag vocabulary, image tag targets and FISVL's
caption value weights are computed from the training captions only (:mod:`rswb.data.tags`).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, ClassVar

from torch import nn

from rswb.config import ImageTaskOptions, method_fields, option
from rswb.data.image_text import RetrievalData
from rswb.engine.task import BuildRequest, TaskBundle
from rswb.metrics.retrieval import TIE_RULES
from rswb.models.backbones import backbone_names, check_backbone_choice
from rswb.models.retrieval import METHODS, retrieval_methods
from rswb.registry import create_loss, create_model, get, register_task
from rswb.tasks.retrieval.data import prepare_data
from rswb.tasks.retrieval.task import RetrievalTask

__all__ = ["RetrievalConfig", "prepare_data", "retrieval_task"]

FISVL, KAMCL = ("fisvl",), ("kamcl",)  # the methods of options only one method uses


@dataclasses.dataclass
class RetrievalConfig(ImageTaskOptions):
    """Options of ``rswb train retrieval``."""

    # Spellings of saved run configs that were renamed (read back by load_run and --resume).
    RENAMED_OPTIONS: ClassVar[dict[str, str]] = {"val_fraction": "val_share", "momentum": "ema_momentum"}
    OWN_VALIDATION: ClassVar[bool] = True  # the set's val split, or the task's own held-out share
    # Values of options a saved run config predates: what those runs ran with (read back by load_run and --resume).
    LEGACY_VALUES: ClassVar[dict[str, Any]] = {"val_rule": "random"}
    SELECTOR: ClassVar[str] = "method"  # options marked methods=(...) are refused for the other methods

    data: str | None = option(None, "caption folder or Karpathy JSON; None: the embedded captions")
    images: str | None = option(None, "image root (UCM-Captions: the UC Merced folder); None: images/ beside data",
                                folder=True)
    fmt: str = option("auto", "caption format: auto | karpathy | coco | precomp",
                      choices=("auto", "karpathy", "coco", "precomp"))
    image_map: str | None = option(None, "CSV of caption-file name,image path rows: an explicit caption-image join")
    method: str = option("clip", " | ".join(METHODS) + ", or a method added with "
                         "rswb.models.retrieval.register_retrieval_method")
    backbone: str = option("efficientnet_lite0", "image backbone: " + " | ".join(backbone_names()))
    freeze_backbone: bool = option(True, "train the heads on cached frozen image features (CPU profile)")
    backbone_path: str | None = option(None, "checkpoint folder of --backbone hf_backbone (Swin, ResNet, ...)",
                                       folder=True)
    text_encoder: str = option("minilm", "minilm (offline) | hf_text (--text-path) | gru_text (train vocabulary)")
    text_path: str | None = option(None, "checkpoint folder of --text-encoder hf_text (BERT, ...)", folder=True)
    freeze_text: bool = option(True, "keep the text transformer frozen and train on its cached token states")
    embed_dim: int = option(512, "joint embedding size", low=1)
    max_words: int = option(30, "captions are cut to this many words", low=1)
    temperature: float = option(0.07, "softmax temperature (learnable for clip/fisvl, fixed for kamcl)", low=0,
                                low_open=True, methods=("clip", "fisvl", "kamcl"))
    margin: float = option(0.2, "hinge margin of the hardest-negative terms", low=0,
                           methods=("vsepp", "fisvl", "kamcl"))
    local_branch: bool = option(True, "fisvl: multi-scale local branch", methods=FISVL)
    fgis_steps: int = option(2, "fisvl: FGIS graph steps (0: off)", low=0, methods=FISVL)
    affil_weight: float = option(1.0, "fisvl: weight of the affiliation (class-centre) loss", low=0,
                                  methods=FISVL)
    hard_weight: float = option(1.0, "fisvl: weight of the scene-adaptive hard-negative loss", low=0,
                                 methods=FISVL)
    beta1: float = option(0.0, "fisvl: hard negative from another scene weighs exp(beta1 * epoch)", methods=FISVL)
    beta2: float = option(0.05, "fisvl: hard negative from the same scene weighs exp(beta2 * epoch)",
                          methods=FISVL)
    value_stage: float = option(0.5, "fisvl: share of the epochs before value-guided stage 2 (1: no stage 2)", low=0,
                                high=1, methods=FISVL)
    hierarchical: bool = option(True, "kamcl: hierarchical aggregator", methods=KAMCL)
    num_tags: int = option(512, "kamcl: tag vocabulary size (0: no knowledge-aided learning)", low=0,
                           methods=KAMCL)
    queue_size: int = option(8000, "kamcl: keys per modality queue (0: in-batch keys only)", low=0,
                             methods=KAMCL)
    ema_momentum: float = option(0.995, "kamcl: EMA momentum of the key encoders", low=0, high=1, high_open=True,
                                 methods=KAMCL)
    moco_weight: float = option(10.0, "kamcl: weight of the momentum InfoNCE", low=0, methods=KAMCL)
    concept_weight: float = option(10.0, "kamcl: weight of the concept BCE in step 2", low=0, methods=KAMCL)
    knowledge_stage: float = option(0.5, "kamcl: share of the epochs before knowledge alignment starts", low=0,
                                    high=1, methods=KAMCL)
    duplicate_captions: bool = option(False, "kamcl: identical training caption strings are positives of each "
                                      "other's images in the momentum InfoNCE (and never negatives)",
                                      methods=KAMCL)
    ties: str = option("expected", "tie rule of the headline R@K (validation selection and test): expected | "
                       "optimistic | pessimistic | published | clip_benchmark; the other rules are reported beside it",
                       choices=TIE_RULES)
    max_images: int | None = option(None, "use at most this many images per split (quick runs)", low=1)
    train_from: str | None = option(None, "partial fine-tuning: train the image backbone from this piece on (e.g. "
                                    "stage6) on cached outputs of the frozen pieces before it; overrides "
                                    "--freeze-backbone")
    views: int = option(4, "partial fine-tuning: dihedral views per training image in the cache", low=1, high=8)
    text_train_last: int = option(0, "partial fine-tuning of the text transformer: train its last N layers on "
                                  "cached hidden states (0: none); overrides --freeze-text", low=0)
    encoder_lr_mult: float = option(1.0, "learning-rate multiplier of the encoders inside the model (fine-tuning)",
                                    low=0, low_open=True)

    def check(self) -> None:
        """Cross-field rules, run by :func:`rswb.config.validate` before any data is read.

        The backbone and the cut come from the registry and the backbone itself. A run that trains from a cut does
        not keep its backbone frozen: ``freeze_backbone`` is recorded as False, so the saved config says what ran.
        """
        if self.method not in retrieval_methods():
            raise ValueError(f"task retrieval options: --method must be one of {', '.join(retrieval_methods())}, "
                             f"got {self.method!r}")
        try:
            check_backbone_choice(self.backbone, self.train_from)
        except ValueError as err:
            raise ValueError(f"task retrieval options: {err}") from None
        if self.train_from is not None:
            self.freeze_backbone = False


def method_parts(cfg: RetrievalConfig, data: RetrievalData) -> tuple[nn.Module, nn.Module, dict[str, float]]:
    """The model, the loss and the loss-term weights of ``cfg.method``, each builder given exactly what it takes.

    The method's own options (those marked ``methods=`` in :class:`RetrievalConfig`) are shared out: ``*_weight``
    weigh the loss terms, the model builder's named switches go to the model, every other one to the loss builder,
    which takes no catch-all: an option no builder takes is an error, never dropped.
    """
    own = {name: getattr(cfg, name) for name in method_fields(RetrievalConfig, cfg.method)}
    weights = {f"{k.removesuffix('_weight')}_loss": own.pop(k) for k in [k for k in own if k.endswith("_weight")]}
    own.pop("num_tags", None)  # a data option: the model takes the size of the vocabulary built with it
    model_takes = inspect.signature(get("model", cfg.method)).parameters
    model_opts = {k: own.pop(k) for k in list(own) if k in model_takes}
    if "num_tags" in model_takes:
        model_opts["num_tags"] = len(data.tag_vocabulary)
    cached_text = data.train.states is not None
    encoders = {"backbone": None if cfg.freeze_backbone and cfg.train_from is None else cfg.backbone,
                "text_encoder": None if cached_text else cfg.text_encoder}
    if encoders["backbone"] is not None:
        encoders.update(pretrained=cfg.pretrained, backbone_path=cfg.backbone_path, train_from=cfg.train_from)
    if encoders["text_encoder"] is not None:
        encoders.update(freeze_text=cfg.freeze_text, text_path=cfg.text_path, text_train_last=cfg.text_train_last,
                        vocab_size=len(data.vocab) if data.vocab is not None else None)
    model = create_model("retrieval_net", method=cfg.method, channels=data.channels, text_dim=data.text_dim,
                         embed_dim=cfg.embed_dim, **model_opts, **encoders)
    if cfg.train_from is not None:  # the frozen trunk is the one whose outputs were cached (random inits differ)
        model.backbone.load_state_dict(data.train.backbone.state_dict())
    needs_model = "model" in inspect.signature(get("loss", cfg.method)).parameters  # KAMCL's momentum encoders
    loss = create_loss(cfg.method, **({"model": model} if needs_model else {}), **own)
    return model, loss, weights


# The task's recipes by profile (the notebooks' PROFILE, rswb.engine.experiments.profile_options): option overrides.
PROFILES: dict[str, dict[str, Any]] = {
    # Seconds per run on 2 CPU cores: the frozen ImageNet EfficientNet-Lite0 on 128-px images and the frozen
    # MiniLM, both cached once, so each epoch only trains the method's heads (a random CNN learned nothing in the
    # few epochs a demo has); a 32-word tag vocabulary and a short queue for the small embedded caption set.
    "quick": {"image_size": 128, "num_tags": 32, "queue_size": 512, "batch_size": 64, "epochs": 8},
    # Frozen ImageNet EfficientNet-Lite0 and MiniLM with cached features (the task's defaults): minutes.
    "cpu": {},
    # Partial fine-tuning on a CPU: the backbone's last stage and head and MiniLM's last two layers train, on
    # cached activations of the frozen rest (benchmarks/results/retrieval_ucm_finetune.md); the encoders' learning
    # rate is a tenth of the heads'.
    "finetune": {"train_from": "stage7", "text_train_last": 2, "encoder_lr_mult": 0.1},
    # Both encoders fine-tune (a GPU profile; FISVL's learning-rate schedule).
    "full": {"freeze_backbone": False, "freeze_text": False},
}


@register_task("retrieval")
def retrieval_task(cfg: RetrievalConfig, request: BuildRequest | None = None) -> TaskBundle:
    """Image-text retrieval (VSE++, CLIP-style, FISVL, KAMCL) on a caption set with images; R@K and mR.

    Training settings this task prefers (the training options below override them): frozen encoders (cached
    features) and partial fine-tuning (``--train-from``, ``--text-train-last``): 10 epochs (the heads' validation mR
    plateaus after 2-4 on UCM-Captions), batch 128, AdamW lr 1e-3, weight decay 0.01, 1 warm-up epoch then cosine;
    fine-tuning:
    20 epochs, batch 64, AdamW lr 4e-5, weight decay 0.01, 10 % warm-up then linear decay (FISVL's schedule).
    """
    if cfg.method not in retrieval_methods():
        raise ValueError(f"unknown method {cfg.method!r}; use one of {', '.join(retrieval_methods())}")
    if cfg.ties not in TIE_RULES:
        raise ValueError(f"unknown tie rule ties={cfg.ties!r}; use one of {', '.join(TIE_RULES)}")
    data = prepare_data(cfg, device=(request or BuildRequest()).device)
    cached_text = data.train.states is not None  # prepare_data cached a frozen transformer's token states
    frozen = data.train.levels is not None and cached_text
    model, loss, weights = method_parts(cfg, data)
    task = RetrievalTask(model, loss, weights, cfg.ties, {"method": cfg.method, "version": _version(cfg),
                                                          "data": f"{data.root.name}"}, cfg.encoder_lr_mult)
    partial = cfg.train_from is not None or cfg.text_train_last > 0
    defaults = ({"epochs": 10, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine",
                 "warmup_epochs": 1.0, "val_fraction": 0.0} if frozen or partial else
                {"epochs": 20, "batch_size": 64, "lr": 4e-5, "weight_decay": 0.01, "schedule": "linear",
                 "warmup_epochs": 2.0, "val_fraction": 0.0})
    return TaskBundle(task, data.train, val=data.val, test=data.test, train_defaults=defaults)


# Per method, its components and the option value that switches each off (the ablations of the result tables).
_COMPONENTS: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "fisvl": (("local", "local_branch", False), ("fgis", "fgis_steps", 0), ("affil", "affil_weight", 0),
              ("hard", "hard_weight", 0), ("value", "value_stage", 1)),
    "kamcl": (("ha", "hierarchical", False), ("knowledge", "num_tags", 0), ("queue", "queue_size", 0),
              ("moco", "moco_weight", 0)),
}


def _version(cfg: RetrievalConfig) -> str:
    """The method, with ``-<component>`` for each component switched off (the run registry's version label)."""
    off = [name for name, option, value in _COMPONENTS.get(cfg.method, ()) if getattr(cfg, option) == value]
    return cfg.method + "".join(f"-{name}" for name in off)


retrieval_task.profiles = PROFILES  # how the engine's experiments find them (no recipe lives there)

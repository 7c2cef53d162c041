"""Backbones: load a model with the head a task needs, from the Hugging Face hub, a local copy,
a model shipped inside a Python package, a random-init config (tests), or timm.

``conf/model/*.yaml`` is a :class:`ModelSpec`; it also names the modules methods may target, as
logical names (``q``, ``k``, ``v``, ``o``, ``up``, ``down``, ``gate``, ``qkv``) mapped to regexes
on module names, so methods never hard-code architecture names. A model whose attention computes q, k and v
with one fused Linear (timm's ViT ``attn.qkv``) says so with ``fused: {qkv: [q, k, v]}``: a method's ``q``/``v``
targets then resolve to that Linear, so method defaults (LoRA's ``[q, v]``) hold on every model.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftlab.config_utils import CONF, require
from peftlab.errors import ConfigError, DataUnavailableError

SOURCES = ("hf", "hf_random", "timm")
HEADS = ("seq_cls", "regression", "qa_span", "causal_lm", "image_cls")
# model.kind → the task heads such a backbone serves, and how a message names it
KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "encoder": (("seq_cls", "regression", "qa_span"), "an encoder (sequence classification, regression, QA spans)"),
    "decoder": (("causal_lm",), "a causal LM (decoder)"),
    "vision": (("image_cls",), "an image backbone"),
}


@dataclass
class ModelSpec:
    """What ``conf/model/<name>.yaml`` holds."""

    name: str
    source: str  # one of SOURCES
    kind: str  # one of KINDS: which task heads the backbone serves (checked against the task before loading)
    path: str | None = None  # hub id, local dir, "package:<python package>" or timm model name
    tokenizer: str | None = None  # defaults to ``path``
    targets: dict[str, str] = field(default_factory=dict)  # logical name -> module-name regex
    fused: dict[str, list[str]] = field(default_factory=dict)  # target -> logical names it computes in one Linear
    head: list[str] = field(default_factory=list)  # regexes of the task-head modules
    config: dict[str, Any] = field(default_factory=dict)  # architecture (hf_random; budget on meta device)
    pretrained: bool = True  # timm: load pretrained weights
    dtype: str = "float32"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        require(self.source in SOURCES, f"model.source must be one of {SOURCES}, got '{self.source}'")
        require(self.source == "hf_random" or bool(self.path), f"model '{self.name}' needs model.path")
        require(self.dtype in ("float32", "bfloat16", "float16"), f"model.dtype '{self.dtype}' not supported")
        require(self.kind in KINDS, f"model.kind must be one of {sorted(KINDS)}, got '{self.kind}'")
        for fused, parts in self.fused.items():
            require(fused in self.targets, f"model.fused names '{fused}', which is not one of model.targets")
            clash = [p for p in parts if p in self.targets]
            require(not clash, f"model.fused: {clash} are parts of '{fused}' and cannot also be model.targets")

    def serves(self, head: str) -> bool:
        """Whether this backbone can carry a task head ``head`` (see :data:`KINDS`)."""
        return head in KINDS[self.kind][0]

    def resolve_targets(self, logical: list[str]) -> list[str]:
        """``logical`` with each part of a fused Linear replaced by that Linear (on timm's ViT, ``[q, v]`` →
        ``[qkv]``), duplicates dropped; an unknown name fails with the valid ones and an override that works."""
        require(len(logical) > 0, "method.targets is empty: name at least one target module")
        part_of = {part: fused for fused, parts in self.fused.items() for part in parts}
        resolved = list(dict.fromkeys(part_of.get(t, t) for t in logical))
        unknown = [t for t in resolved if t not in self.targets]
        if unknown:
            known = [t for t in resolved if t in self.targets] or [part_of.get(t, t) for t in ("q", "v")]
            example = known if all(t in self.targets for t in known) else sorted(self.targets)
            raise ConfigError(f"unknown target(s) {unknown} for model '{self.name}'; valid targets: "
                              f"{sorted(self.targets)} (e.g. method.targets=[{','.join(dict.fromkeys(example))}])")
        return resolved

    def target_regex(self, logical: list[str]) -> str:
        """One regex (for ``re.fullmatch`` on a module name, as peft does) matching the ``logical`` targets."""
        alternatives = "|".join(f"(?:{self.targets[t]})" for t in self.resolve_targets(logical))
        return rf"(?:.*\.)?(?:{alternatives})"

    def logical_name(self, module_name: str) -> str | None:
        """The logical target name (``q``, ``v``...) of ``module_name``, or None."""
        for logical, pattern in self.targets.items():
            if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", module_name):
                return logical
        return None

    def is_head(self, module_name: str) -> bool:
        return any(re.fullmatch(rf"(?:.*\.)?(?:{p})", module_name) for p in self.head)


def models_of_kind(kind: str) -> list[str]:
    """Names of the model configs (``conf/model/*.yaml``) of ``kind``."""
    from omegaconf import OmegaConf

    return sorted(p.stem for p in (CONF / "model").glob("*.yaml") if OmegaConf.load(p).get("kind") == kind)


def resolve_path(path: str) -> str:
    """``package:<name>`` → the directory inside that installed package holding ``config.json``."""
    if not path.startswith("package:"):
        return path
    pkg = path.split(":", 1)[1]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(f"model package '{pkg}' is not installed; run `make install`")
    root = Path(next(iter(spec.submodule_search_locations)))
    configs = sorted(root.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))  # outermost first
    if not configs:
        raise DataUnavailableError(f"package '{pkg}' holds no model (no config.json under {root})")
    return str(configs[0].parent)


def _auto_class(head: str) -> Any:
    import transformers

    classes = {
        "seq_cls": transformers.AutoModelForSequenceClassification,
        "regression": transformers.AutoModelForSequenceClassification,
        "qa_span": transformers.AutoModelForQuestionAnswering,
        "causal_lm": transformers.AutoModelForCausalLM,
    }
    require(head in classes, f"Hugging Face models do not serve task head '{head}' (valid: {sorted(classes)})")
    return classes[head]


def _head_kwargs(head: str, num_labels: int | None) -> dict[str, Any]:
    if head == "seq_cls":
        return {"num_labels": num_labels}
    if head == "regression":
        return {"num_labels": 1, "problem_type": "regression"}
    return {}


def _unreachable(what: str, path: str, err: Exception, hub_id: str | None = None,
                 local: str = "<dir>") -> DataUnavailableError:
    """The one-line offline error: what failed, how to fetch it (``hub_id``) and how to point to it (``local``)."""
    return DataUnavailableError(
        f"could not load {what} '{path}' ({type(err).__name__}). Without network access, download it "
        f"elsewhere (`hf download {hub_id or path} --local-dir <dir>`), copy it here and set model.path={local} "
        f"(or fill HF_HOME's cache and set HF_HUB_OFFLINE=1)."
    )


def load_hf(spec: ModelSpec, head: str, num_labels: int | None) -> nn.Module:
    """A transformers model with the head ``head`` (random-init for ``source=hf_random``)."""
    import transformers

    auto = _auto_class(head)
    dtype = getattr(torch, spec.dtype)
    if spec.source == "hf_random":
        config = transformers.AutoConfig.for_model(**spec.config, **_head_kwargs(head, num_labels))
        model = auto.from_config(config, dtype=dtype)
    else:
        path = resolve_path(spec.path)
        try:
            model = auto.from_pretrained(path, dtype=dtype, **_head_kwargs(head, num_labels))
        except OSError as err:
            raise _unreachable("model", path, err) from err
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def load_tokenizer(spec: ModelSpec) -> Any:
    """The tokenizer named by ``model.tokenizer`` (or ``model.path``)."""
    import transformers

    path = spec.tokenizer or spec.path
    require(path is not None, f"model '{spec.name}' needs model.tokenizer")
    path = resolve_path(path)
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise _unreachable("tokenizer", path, err) from err


def load_backbone(spec: ModelSpec, head: str, num_labels: int | None) -> nn.Module:
    """The model for ``head`` (see :data:`HEADS`); dispatch on ``spec.source``."""
    require(head in HEADS, f"unknown task head '{head}'; valid heads: {HEADS}")
    if spec.source == "timm":
        import timm

        require(head == "image_cls", f"timm models serve only image classification, not '{head}'")
        try:
            return timm.create_model(spec.path, pretrained=spec.pretrained, num_classes=num_labels, **spec.config)
        except (OSError, RuntimeError) as err:
            hub_id, local = f"timm/{spec.path}", "local-dir:<dir>"
            raise _unreachable("timm model", spec.path, err, hub_id=hub_id, local=local) from err
    return load_hf(spec, head, num_labels)


def load_preprocessor(spec: ModelSpec, model: nn.Module) -> Any:
    """What a task prepares its inputs with: the tokenizer, or for timm the backbone's data config
    (input size, interpolation, mean/std)."""
    if spec.source == "timm":
        import timm

        return timm.data.resolve_model_data_config(model)
    return load_tokenizer(spec)

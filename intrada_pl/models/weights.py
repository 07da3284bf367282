"""Reading weight files, and loading DeepLabV2 weights: ImageNet inits and released ADVENT/IntraDA state dicts.

Every file is read with ``torch.load(map_location="cpu", weights_only=True)``; keys and shapes are
checked here first so that a wrong file fails with a message naming what differs rather than
PyTorch's generic ``load_state_dict`` error.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from intrada_pl.errors import BadInputError
from intrada_pl.models.resnet import HEAD_MODULES, RESNET_LAYOUTS, Bottleneck

_MAIN_HEAD_KEY = "layer6.conv2d_list.0.weight"
# ImageNet classifiers that init files carry and we never load: torchvision's ``fc`` and the
# DeepLab init file's own ``layer5`` (REFERENCE A1).
_INIT_CLASSIFIERS = ("fc", "layer5")
_DEPTH_BY_LAYOUT = {(block is Bottleneck, blocks[2]): depth for depth, (block, blocks) in RESNET_LAYOUTS.items()}
_SHOWN_KEYS = 5


class CheckpointMismatchError(BadInputError, ValueError):
    """A weights file does not fit the model (class count, depth, heads or tensor shapes)."""


LIGHTNING_SEGMENTER_PREFIX = "model."
#: What every command taking segmentation weights accepts, for error messages.
ACCEPTED_CHECKPOINTS = (
    "a Lightning checkpoint (.ckpt) written by `intrada fit`, a DeepLabV2 state dict (.pth) "
    "saved with torch.save(model.state_dict()) such as the released ADVENT / IntraDA models, "
    "or a released SegFormer / DAFormer / HRDA / MIC segmentation file"
)


def read_checkpoint(path: str | Path, mmap: bool = False) -> Mapping:
    """The object saved in ``path``, loaded onto the CPU with ``weights_only=True``.

    ``mmap``: map the tensors' data instead of reading it (to look at a checkpoint's keys and
    hyper-parameters before Lightning loads it: the file is read once); files in the legacy
    format (PyTorch <= 1.5, e.g. the released 0.4.1 models) cannot be mapped and are read.

    ``torch.load`` fails on a file that is not a checkpoint (text, an image, a truncated download)
    with whatever its unpickler trips over (UnpicklingError, RuntimeError, KeyError, IndexError,
    EOFError, ...) and a message that is about pickles; this turns all of them into one
    :class:`CheckpointMismatchError` naming the file and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}" + (" (a directory, not a file)" if path.is_dir() else ""))
    try:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            blob = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no mmap
    except Exception as error:  # whatever the unpickler tripped over, the file is not a checkpoint
        raise CheckpointMismatchError(
            f"{path} is not a readable PyTorch checkpoint (torch.load raised {type(error).__name__}: a truncated or "
            f"corrupt file, another kind of file, or a pickle of more than tensors); expected {ACCEPTED_CHECKPOINTS}"
        ) from None
    if not isinstance(blob, Mapping):
        raise CheckpointMismatchError(f"{path} holds a {type(blob).__name__}, not a state dict; expected {ACCEPTED_CHECKPOINTS}")
    return blob


def is_lightning_checkpoint(blob: Mapping) -> bool:
    """Whether a loaded file is a Lightning checkpoint (ours), rather than a bare state dict."""
    return "pytorch-lightning_version" in blob


def saved_preprocessing(blob: Mapping) -> str:
    """The input pre-processing a loaded file's weights expect: our checkpoints record it (in the
    ``segmenter`` block, or flat in earlier versions), the reference's state dicts were trained on
    ``caffe_bgr`` input."""
    hparams = blob.get("hyper_parameters") or {}
    segmenter = hparams.get("segmenter")
    if isinstance(segmenter, Mapping):
        hparams = segmenter.get("init_args") or {}
    return hparams.get("preprocessing", "caffe_bgr")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load the DeepLabV2 state dict stored in ``path`` (see :func:`unwrap_state_dict`)."""
    return unwrap_state_dict(read_checkpoint(path))


def unwrap_state_dict(obj: Mapping) -> dict[str, Tensor]:
    """The segmenter's state dict inside a loaded file.

    A Lightning checkpoint of any stage keeps the segmenter under ``model.`` (discriminators and
    other parts beside it are dropped); otherwise ``{"state_dict": ...}`` / ``{"model": ...}``
    wrappers are unwrapped and a leading component shared by every key (``Scale.`` in the
    DeepLab init file, ``module.`` from DataParallel) is stripped when that reveals the ResNet
    layout."""
    if is_lightning_checkpoint(obj) and isinstance(obj.get("state_dict"), Mapping):
        n = len(LIGHTNING_SEGMENTER_PREFIX)
        return {k[n:]: v for k, v in obj["state_dict"].items() if k.startswith(LIGHTNING_SEGMENTER_PREFIX)}
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    state = dict(obj)
    if "conv1.weight" not in state and state:
        prefixes = {k.split(".", 1)[0] for k in state}
        if len(prefixes) == 1 and all("." in k for k in state):
            stripped = {k.split(".", 1)[1]: v for k, v in state.items()}
            if "conv1.weight" in stripped:
                state = stripped
    return state


def _top(key: str) -> str:
    return key.split(".", 1)[0]


def _fmt(shape: torch.Size) -> str:
    return "x".join(map(str, shape))


def _first(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def _infer_depth(state: Mapping[str, Tensor]) -> int | None:
    blocks = {k.split(".")[1] for k in state if k.startswith("layer3.")}
    return _DEPTH_BY_LAYOUT.get(("layer3.0.conv3.weight" in state, len(blocks)))


def infer_architecture(state_dict: Mapping[str, Tensor], source: str = "state dict") -> dict[str, int | bool]:
    """``dict(num_classes, depth, multi_level)`` of a segmentation state dict (ours or the reference's,
    e.g. from ``read_state_dict``), so a bare ``.pth`` can be rebuilt without a config.
    The pre-processing is not stored in the file; reference files use ``caffe_bgr``."""
    if _MAIN_HEAD_KEY not in state_dict:
        raise CheckpointMismatchError(f"{source} is not a segmentation state dict: no {_MAIN_HEAD_KEY}")
    depth = _infer_depth(state_dict)
    if depth is None:
        raise CheckpointMismatchError(
            f"{source}: unrecognised DeepLabV2 backbone layout; supported ResNet depths: {sorted(RESNET_LAYOUTS)}")
    return dict(num_classes=state_dict[_MAIN_HEAD_KEY].shape[0], depth=depth,
                multi_level=any(_top(k) == "layer5" for k in state_dict))


def _describe(model: nn.Module) -> str:
    """``DeepLabV2(num_classes=19, depth=101, multi_level=True)``: the network and its shape-defining arguments."""
    shape_args = ("num_classes", "depth", "multi_level", "encoder", "head")
    args = ", ".join(f"{k}={getattr(model, k)}" for k in shape_args if hasattr(model, k))
    return f"{type(model).__name__}({args})"


def _check_and_load(model: nn.Module, state: dict[str, Tensor], expected: Mapping[str, Tensor],
                    source: str) -> None:
    """Load ``state`` into ``model`` iff its keys are exactly ``expected``'s (BN ``num_batches_tracked``
    may be absent, as in PyTorch <= 0.4 files) and every shape agrees; otherwise raise."""
    if _MAIN_HEAD_KEY in state and _MAIN_HEAD_KEY in expected:
        theirs = state[_MAIN_HEAD_KEY].shape
        if theirs[0] != expected[_MAIN_HEAD_KEY].shape[0]:
            raise CheckpointMismatchError(
                f"{source}: checkpoint has {theirs[0]} classes ({_MAIN_HEAD_KEY}: {_fmt(theirs)}), "
                f"model has {model.num_classes}")
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        depth = _infer_depth(state)
        hint = f" (checkpoint backbone looks like depth {depth})" if depth not in (None, model.depth) else ""
        parts = []
        if missing:
            parts.append(f"missing keys: {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_first(unexpected)}")
        raise CheckpointMismatchError(
            f"{source} does not match {_describe(model)}{hint}; " + "; ".join(parts))
    wrong = [f"{k}: checkpoint {_fmt(v.shape)} vs model {_fmt(expected[k].shape)}"
             for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        raise CheckpointMismatchError(f"{source}: shape mismatch: {_first(wrong)}")
    model.load_state_dict(state, strict=False)  # keys verified above; backbone loads omit the heads


def check_finite(state: Mapping[str, Tensor], source: str) -> None:
    """Refuse weights with NaN or infinity, as training refuses to write them: a network with them
    predicts garbage (or one class) everywhere, and a ranking or an evaluation of it means nothing."""
    bad = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise CheckpointMismatchError(f"{source} holds non-finite weights ({_first(bad)}): a run that diverged; "
                                      "use an earlier checkpoint of it")


def load_state_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> str:
    """Load a full segmentation state dict strictly, naming any mismatch; refuse non-finite weights."""
    check_finite(state, source)
    _check_and_load(model, state, model.state_dict(), source)
    return f"all {len(state)} tensors of a {_describe(model)} from {source}"


def load_reference_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Load a full segmentation state dict (released ADVENT/IntraDA ``.pth`` or ours), strictly."""
    return load_state_checked(model, read_state_dict(path), str(path))


def load_pretrained(model: nn.Module, path: str | Path | None) -> str:
    """Initialise a fresh model from ``path`` and say what was loaded; the format is detected from keys.

    - segmentation weights (``layer6.*``; a bare state dict or any stage's Lightning checkpoint,
      except a calibration one, whose BatchNorms were converted): strict full load, with a warning
      when they were trained on another pre-processing than the model's;
    - a ResNet ImageNet backbone: either torchvision's (``fc.*`` skipped; torchvision puts the stride
      on the 3x3 conv, ours on the first 1x1, but the tensor shapes are identical) or the DeepLab init
      file (``Scale.``-prefixed keys, its ``layer5`` classifier skipped as the reference does).
      The backbone must match exactly; both heads keep their random init.
    - ``None``: warn and keep the random init.
    """
    if path is None:
        warnings.warn("no pretrained weights given: starting DeepLabV2 from random init",
                      UserWarning, stacklevel=2)
        return "random"
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"pretrained weights not found: {path} (segmenter.init_args.pretrained). The configs start from "
            f"DeepLab_resnet_pretrained_imagenet.pth, the ImageNet init ADVENT and IntraDA use: download it from the "
            f"ADVENT repository's releases page (https://github.com/valeoai/ADVENT/releases, see its README) to that path, "
            f"or give another checkpoint, or null for a random init")
    blob = read_checkpoint(path)
    state = unwrap_state_dict(blob)
    if any(_top(k) == "layer6" for k in state):
        calibration = (blob.get("hyper_parameters") or {}).get("calibration")
        if calibration is not None:
            raise CheckpointMismatchError(
                f"{path} is a {calibration} calibration checkpoint (converted BatchNorms); "
                "start from a segmentation checkpoint, e.g. the one it calibrated")
        if saved_preprocessing(blob) != model.normalize.mode:
            warnings.warn(f"{path} was trained on preprocessing={saved_preprocessing(blob)!r} input; "
                          f"the model uses {model.normalize.mode!r}", UserWarning, stacklevel=2)
        return load_state_checked(model, state, str(path))
    skipped = sorted({_top(k) for k in state} & set(_INIT_CLASSIFIERS))
    if "fc" in skipped and model.normalize.mode != "imagenet":
        warnings.warn(f"{path} looks like torchvision ImageNet weights, which expect "
                      f"preprocessing='imagenet'; the model uses {model.normalize.mode!r}",
                      UserWarning, stacklevel=2)
    backbone = {k: v for k, v in state.items() if _top(k) not in _INIT_CLASSIFIERS}
    expected = {k: v for k, v in model.state_dict().items() if _top(k) not in HEAD_MODULES}
    check_finite(backbone, str(path))
    _check_and_load(model, backbone, expected, str(path))
    dropped = f"; skipped {', '.join(skipped)}" if skipped else ""
    return f"ImageNet backbone ({len(backbone)} tensors) of a {_describe(model)} from {path}{dropped}; heads random (N(0, 0.01))"

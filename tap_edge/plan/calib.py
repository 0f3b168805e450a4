"""Calibration and evaluation inputs: a folder of images or tensors, read with the model's own preprocessing.

A folder may hold images (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.webp``) and tensors (``.npy``, ``.pt``);
other files (``labels.csv``, ``README.md``) and hidden files are ignored. Files are taken in sorted name
order, so ``skip`` / ``limit`` select the same samples every time (``--calib-samples 16`` = the first 16).

- Images: converted to RGB (3-channel models: grayscale is replicated, alpha dropped, as ImageNet loaders do)
  or to grayscale (1-channel models); shorter side resized to ``Preprocess.resize`` (bicubic, never below the
  crop), centre-cropped to the input size, then ``(x / scale - mean) / std`` per channel.
- Tensors: float arrays are taken as already-preprocessed model input, one sample ``[C, H, W]`` or a batch
  ``[N, C, H, W]`` per file (``.pt`` files are read with ``torch.load(weights_only=True)``); ``uint8`` arrays
  are raw pixels (``[H, W, C]`` or ``[C, H, W]``) and get the image preprocessing. Their channel count must
  match the model's.

Every problem is one :class:`~tap_edge.core.errors.UserError` naming the folder or file.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from tap_edge.core.errors import UserError
from tap_edge.graph.models import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TENSOR_SUFFIXES = (".npy", ".pt")


def list_samples(folder: str | Path) -> list[Path]:
    """The sample files of ``folder`` in sorted order (a single file is a list of itself)."""
    p = Path(folder)
    if not p.exists():
        raise UserError(f"{p}: calibration folder not found", "check the path")
    if p.is_file():
        files = [p]
    else:
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                       and f.suffix.lower() in IMAGE_SUFFIXES + TENSOR_SUFFIXES)
    if not files:
        raise UserError(f"{p}: no images or tensors in the folder",
                        f"put {', '.join(IMAGE_SUFFIXES + TENSOR_SUFFIXES)} files there")
    return files


def _resize_crop(img: object, pre: Preprocess) -> np.ndarray:
    from PIL import Image

    _, h, w = pre.input_size
    side = max(pre.resize, h, w)
    iw, ih = img.size  # type: ignore[attr-defined]
    s = side / min(iw, ih)
    nw, nh = max(w, round(iw * s)), max(h, round(ih * s))
    if (nw, nh) != (iw, ih):
        img = img.resize((nw, nh), Image.BICUBIC)  # type: ignore[attr-defined]
    left, top = (nw - w) // 2, (nh - h) // 2
    a = np.asarray(img.crop((left, top, left + w, top + h)), dtype=np.float32)  # type: ignore[attr-defined]
    return a[:, :, None] if a.ndim == 2 else a


def _normalise(hwc: np.ndarray, pre: Preprocess) -> np.ndarray:
    c = hwc.shape[2]
    mean = np.asarray(pre.mean, np.float32)[:c]
    std = np.asarray(pre.std, np.float32)[:c]
    return ((hwc / pre.scale - mean) / std).transpose(2, 0, 1)


def _load_image(f: Path, pre: Preprocess) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c = pre.input_size[0]
    if c not in (1, 3):
        raise UserError(f"{f}: the model takes {c}-channel input, which images cannot give",
                        "save the samples as .npy tensors [C, H, W]")
    try:
        with Image.open(f) as im:
            im = im.convert("RGB" if c == 3 else "L")
            return _normalise(_resize_crop(im, pre), pre)
    except Image.DecompressionBombError as e:  # more pixels than Pillow decodes safely
        raise UserError(f"{f}: image too large to read ({str(e).split(',')[0]})",
                        "shrink it (a calibration sample is resized to the model's input anyway) or remove it"
                        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{f}: unreadable image ({e.__class__.__name__})",
                        "remove or replace the file") from None


def _load_tensor(f: Path, pre: Preprocess) -> tuple[np.ndarray, bool]:
    """(samples [N, C, H, W], whether the file held a batch rather than one sample)."""
    try:
        if f.suffix.lower() == ".npy":
            a = np.load(f, allow_pickle=False)
        else:
            t = torch.load(f, map_location="cpu", weights_only=True)
            if not isinstance(t, torch.Tensor):
                raise ValueError("the file holds no single tensor")
            a = t.numpy()
    except Exception as e:  # noqa: BLE001 - numpy / torch raise many kinds for a damaged file
        raise UserError(f"{f}: unreadable tensor file ({e.__class__.__name__}: {str(e)[:80]})",
                        "save one array [C, H, W] or [N, C, H, W] with numpy.save or torch.save") from None
    c, h, w = pre.input_size
    if a.dtype == np.uint8:  # raw pixels
        if a.ndim == 3 and a.shape[0] == c and a.shape[2] != c:
            a = a.transpose(1, 2, 0)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] != c:
            raise UserError(f"{f}: pixel array of shape {list(a.shape)} has the wrong channel count",
                            f"the model takes {c} channels ([H, W, {c}] uint8)")
        from PIL import Image

        img = Image.fromarray(a[:, :, 0] if c == 1 else a)
        return _normalise(_resize_crop(img, pre), pre)[None], False
    if not np.issubdtype(a.dtype, np.floating):
        raise UserError(f"{f}: tensor of type {a.dtype} is neither float model input nor uint8 pixels",
                        "save float32 model input or uint8 pixels")
    batched = a.ndim == len(pre.input_size) + 1
    if a.ndim == len(pre.input_size):
        a = a[None]
    if a.ndim != len(pre.input_size) + 1:
        raise UserError(f"{f}: tensor of shape {list(a.shape)} is not one sample {list(pre.input_size)} or a batch",
                        "save [C, H, W] or [N, C, H, W]")
    if a.shape[1] != c:
        raise UserError(f"{f}: tensor has {a.shape[1]} channels, the model takes {c}",
                        f"save [N, {c}, H, W] samples")
    if tuple(a.shape[2:]) != tuple(pre.input_size[1:]):
        raise UserError(f"{f}: tensor samples are {list(a.shape[1:])}, the model takes {list(pre.input_size)}",
                        "save preprocessed model input of that shape")
    return a.astype(np.float32, copy=False), batched


def load_images(folder: str | Path, preprocess: Preprocess, limit: int | None = None,
                skip: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Load samples ``skip .. skip + limit`` of ``folder`` as one float tensor [N, C, H, W] plus their names.

    Names are file names (``name.npy[3]`` for the 4th sample of a batch file)."""
    if limit is not None and limit <= 0:
        raise UserError(f"sample count must be positive, got {limit}", "e.g. 16 calibration samples")
    if skip < 0:
        raise UserError(f"cannot skip {skip} samples", "skip must be >= 0")
    files = list_samples(folder)
    arrays: list[np.ndarray] = []
    names: list[str] = []
    pos = 0
    for f in files:
        if limit is not None and len(names) >= limit:
            break
        if f.suffix.lower() in IMAGE_SUFFIXES:
            if pos < skip:
                pos += 1
                continue
            arrays.append(_load_image(f, preprocess)[None])
            names.append(f.name)
            pos += 1
            continue
        a, batched = _load_tensor(f, preprocess)
        lo = max(0, skip - pos)
        pos += len(a)
        a = a[lo:]
        if limit is not None:
            a = a[: limit - len(names)]
        if len(a):
            arrays.append(a)
            names.extend([f"{f.name}[{lo + i}]" for i in range(len(a))] if batched else [f.name])
    if not names:
        raise UserError(f"{folder}: no samples left after skipping {skip}", "lower --skip or add samples")
    return torch.from_numpy(np.concatenate(arrays)), names


def load_labels(path: str | Path) -> dict[str, int]:
    """Read ``file,class_index`` rows of a CSV (more columns allowed, e.g. ImageNet's wnid and name)."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise UserError(f"{p}: labels file not found", "pass --labels with a CSV of file,class_index") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{p}: unreadable labels file ({e.__class__.__name__})",
                        "a CSV with a header row: file,class_index") from None
    if not rows or "file" not in rows[0] or "class_index" not in rows[0]:
        raise UserError(f"{p}: labels need the columns 'file' and 'class_index'",
                        "a CSV with a header row: file,class_index")
    out: dict[str, int] = {}
    for i, r in enumerate(rows, start=2):
        try:
            out[str(r["file"]).strip()] = int(str(r["class_index"]).strip())
        except (TypeError, ValueError):
            raise UserError(f"{p}: line {i}: class_index '{r.get('class_index')}' is not an integer",
                            "fix the CSV") from None
    return out


def labels_for(names: list[str], labels: dict[str, int], source: str = "labels") -> torch.Tensor:
    """Class indices of ``names`` (batch-file names ``x.npy[3]`` fall back to ``x.npy``); a missing label is
    an error naming the first sample without one."""
    out = []
    for n in names:
        key = n if n in labels else n.split("[", 1)[0]
        if key not in labels:
            missing = sum(1 for m in names if m not in labels and m.split("[", 1)[0] not in labels)
            raise UserError(f"{source}: no label for '{n}' ({missing} of {len(names)} samples have none)",
                            "add a row file,class_index for every sample, or evaluate without labels")
        out.append(labels[key])
    return torch.tensor(out, dtype=torch.long)


def find_labels(folder: str | Path) -> Path | None:
    """``labels.csv`` beside the samples, if there is one."""
    p = Path(folder)
    cand = (p if p.is_dir() else p.parent) / "labels.csv"
    return cand if cand.exists() else None


def labels_within(labels: torch.Tensor, classes: int, source: str,
                  given: Path | None) -> tuple[torch.Tensor | None, str | None]:
    """(``labels``, None) when every class index is one of the model's ``classes`` outputs. Else labels the
    user passed (``given``, ``--labels``) are refused in one line, and a labels file found beside the data (an
    ImageNet ``labels.csv`` for a 10-class model) is set aside: (None, why), said on stderr; top-1 is not
    scored, agreement with the float model still is."""
    from tap_edge.core import console

    top = int(labels.max()) if len(labels) else -1
    if top < classes:
        return labels, None
    why = f"{source} has class indices up to {top}, the model outputs {classes} classes"
    if given is not None:
        raise UserError(why, f"pass labels of the model's own classes (file,class_index with class_index < {classes})")
    console.info(f"top-1 not scored: {why}; agreement with the float model only (pass --labels for its classes)")
    return None, f"not scored: {why}"

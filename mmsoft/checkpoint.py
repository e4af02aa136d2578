"""Reading checkpoints: weights-only unpickling with an allowlist, refusal of damaged files, and the message for a
tensor that does not fit. Below the models (the SOFT converter loads through it) and the tools' run-time set-up.

**Allowlist.** mmengine's checkpoints hold, besides tensors, numpy arrays/scalars (in ``message_hub`` and ``meta``),
its ``HistoryBuffer`` and ``ConfigDict``, and ``getattr(HistoryBuffer, 'min')``-style references to the buffer's
statistics methods. Rather than loading with ``weights_only=False`` (which runs arbitrary code from the file), we
allowlist exactly those types. ``getattr`` is not allowlisted: a guarded stand-in registered under its name resolves
only HistoryBuffer's own statistics methods and rejects everything else. ``import mmsoft`` installs the allowlist
(:func:`allow_mmengine_checkpoint_types`), so mmdet's ``init_detector`` / ``DetInferencer``, mmseg's ``init_model``
and mmengine's ``load_checkpoint`` read mmsoft checkpoints under torch's default ``weights_only=True``.

**Explicit weights-only.** torch's default can be switched off from the environment
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``), and mmengine's loaders call ``torch.load`` without ``weights_only``. Every
load mmsoft performs goes through :func:`load_checkpoint_safely`, which passes ``weights_only=True`` itself (for
mmengine's remote schemes, by forcing it around mmengine's loader); the tools additionally route the runner's and the
inferencers' loads through it (:func:`use_safe_checkpoint_loading`).

**Verification** (:func:`verify_checkpoint_file`, :func:`check_checkpoint_values`), because torch reads a damaged
file without complaint:

- ``torch.save`` writes a zip archive whose records carry a CRC-32; torch does not check it on load, we do (for local
  files: one read of the file, ~1 GB/s). A flipped bit anywhere in the stored tensors fails it. Records saved with
  ``torch.serialization.set_crc32_options(False)`` have CRC 0 and are not checked.
- A file that starts like a zip but is not a complete one is truncated; one that is neither a zip nor a legacy
  (pre-1.6) pickle checkpoint is not a checkpoint at all (an HTML error page, a Git LFS pointer, ...).
- Floating-point tensors must be finite and below :data:`ABSURD_MAGNITUDE` (1e30) in magnitude. The CRC only proves
  the file is what was written; this catches what was corrupted before it was written (or files without CRCs):
  flipping the top exponent bit of any float32 weight above ~3e-9 in magnitude lands above 1e30, while no trained
  network or optimizer state comes within many orders of magnitude of it (activations would overflow float32).
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import numpy as np
import torch
from mmengine.config import ConfigDict
from mmengine.logging import HistoryBuffer

_NUMPY_SCALARS = ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                  "float16", "float32", "float64")

#: Floating-point checkpoint values at or above this magnitude are treated as corruption (see the module docstring).
ABSURD_MAGNITUDE = 1e30
_CRC_CHUNK = 1 << 22


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, damaged, unsafe, or not fitting the model.

    The message names the file and what is wrong; the tools print it and exit instead of a traceback.
    """


def _history_buffer_statistic(obj: object, name: str):
    """Stand-in for ``getattr`` in checkpoints: only ``HistoryBuffer.<statistics method>``."""
    if obj is HistoryBuffer and name in ("min", "max", "current", "mean", *HistoryBuffer._statistics_methods):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"checkpoint asks for getattr({obj!r}, {name!r}); mmsoft only allows "
                                 "HistoryBuffer statistics methods here")


def _numpy_reconstructors() -> list:
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    return [_reconstruct, scalar]


def mmengine_checkpoint_types() -> list:
    """Everything (besides tensors) that mmengine writes into a training checkpoint."""
    import codecs
    types: list = [np.ndarray, np.dtype, codecs.encode, ConfigDict, HistoryBuffer, *_numpy_reconstructors()]
    for name in _NUMPY_SCALARS:
        types += [getattr(np, name), type(np.dtype(name))]
    types.append((_history_buffer_statistic, "builtins.getattr"))
    return types


def allow_mmengine_checkpoint_types() -> None:
    """Allowlist the non-tensor types mmengine saves for ``torch.load(weights_only=True)``; cheap and idempotent
    (torch keeps the allowlist as a set)."""
    torch.serialization.add_safe_globals(mmengine_checkpoint_types())


def allow_reference_checkpoint_types() -> None:
    """The mmengine allowlist plus what timm's CheckpointSaver adds to the reference SOFT checkpoints: the training
    script's ``args`` (an ``argparse.Namespace``, a plain attribute container)."""
    import argparse

    allow_mmengine_checkpoint_types()
    torch.serialization.add_safe_globals([argparse.Namespace])


def _local_path(filename: str) -> str | None:
    """The local path of ``filename``, or None when it names a remote / zoo scheme (``https://``, ``s3://``, ...)."""
    if "://" in filename:
        return filename[len("file://"):] if filename.startswith("file://") else None
    return os.path.expanduser(filename)


def _describe_non_zip(head: bytes) -> str | None:
    """Why a file that is not a zip archive is not a checkpoint either; None for a legacy torch (pickle) file."""
    if head.startswith(b"\x80"):  # pickle protocol 2+: torch.save(..., _use_new_zipfile_serialization=False)
        return None
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the checkpoint itself; fetch it with `git lfs pull`"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return "is an HTML/XML page, not a checkpoint (a failed download?); download it again"
    return (f"is not a PyTorch checkpoint: neither a zip archive (what torch.save writes) nor a legacy pickle "
            f"checkpoint (first bytes: {head[:16]!r})")


def verify_checkpoint_file(path: str) -> None:
    """Raise :class:`CheckpointError`, naming ``path`` and the damage, when the file is missing, empty, truncated, not
    a checkpoint, or when a zip record fails its CRC-32. Legacy (non-zip) and ``.safetensors`` files carry no CRC:
    only their presence is checked here (their values are checked after loading)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); copy or download it again")
    if path.endswith(".safetensors"):
        return
    with open(path, "rb") as f:
        head = f.read(64)
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK\x03\x04"):
            raise CheckpointError(f"checkpoint {path} is truncated or damaged: it starts as a zip archive (the "
                                  f"format torch.save writes) but its {size} bytes do not hold a complete one; copy "
                                  "or download it again")
        reason = _describe_non_zip(head)
        if reason is not None:
            raise CheckpointError(f"{path} {reason}")
        return
    record = "?"
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size > 0:  # saved with torch's CRC computation switched off
                    continue
                record = info.filename
                with archive.open(info) as data:  # zipfile compares the CRC-32 once the record is read to its end
                    while data.read(_CRC_CHUNK):
                        pass
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupted: zip record {record!r} fails verification ({err}); "
                              "the file changed after it was written (disk, copy or download error). Copy or download "
                              "it again, or re-save it from a good copy") from None


def _iter_float_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel():
            yield prefix or "<tensor>", obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _iter_float_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _iter_float_tensors(value, f"{prefix}[{i}]")


def check_checkpoint_values(checkpoint: Any, filename: str) -> None:
    """Raise :class:`CheckpointError` listing the tensors of ``checkpoint`` (any nesting of dicts / lists) that hold
    NaN / inf or values of magnitude >= :data:`ABSURD_MAGNITUDE`: the signature of a corrupted file."""
    bad = []
    for name, tensor in _iter_float_tensors(checkpoint):
        low, high = torch.aminmax(tensor.detach())  # one pass, no copy; NaN propagates
        peak = max(-float(low), float(high))
        if math.isnan(peak) or math.isinf(peak):
            count = int((~torch.isfinite(tensor)).sum())
            bad.append(f"{name}: {count} of {tensor.numel()} values are NaN/inf")
        elif peak >= ABSURD_MAGNITUDE:
            count = int((tensor.detach().abs() >= ABSURD_MAGNITUDE).sum())
            bad.append(f"{name}: {count} of {tensor.numel()} values have magnitude >= {ABSURD_MAGNITUDE:g} "
                       f"(max {peak:.3g})")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad) - 5} more tensors)" if len(bad) > 5 else "")
        raise CheckpointError(f"checkpoint {filename} holds corrupted values ({shown}); no trained weights look "
                              "like this: the file was damaged before or after it was written, or training "
                              "diverged. Use another copy or an earlier checkpoint")


def _refused(filename: str, err: Exception) -> CheckpointError:
    return CheckpointError(f"checkpoint {filename} was refused by weights-only loading: it holds objects other than "
                           "tensors and the types mmengine writes, and unpickling them could run code from the file. "
                           "mmsoft never loads with weights_only=False; if you trust the file, load it yourself and "
                           f"re-save only its state dict. torch said: {err}")


def _torch_load_weights_only(source: Any, filename: str, map_location: Any) -> Any:
    """``torch.load(source, weights_only=True)`` with the allowlist; refusals and read errors name the file."""
    allow_reference_checkpoint_types()
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refused(filename, err) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {filename} cannot be read: {err}") from None


@contextlib.contextmanager
def forced_weights_only() -> Iterator[None]:
    """Inside the block, every ``torch.load`` runs with ``weights_only=True`` (an explicit ``weights_only=False``
    raises :class:`CheckpointError`): for third-party loaders (mmengine's URL schemes) that call ``torch.load``
    without the argument, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says. ``torch.load`` is swapped for the
    whole process while the block runs (other threads' loads are forced too) and restored after it."""
    original = torch.load

    def load(*args, weights_only: bool | None = None, **kwargs):
        if weights_only is False:
            raise CheckpointError("a loader asked torch.load for weights_only=False; mmsoft loads checkpoints only "
                                  "with weights_only=True")
        return original(*args, weights_only=True, **kwargs)

    allow_reference_checkpoint_types()
    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def _load_local(filename: str, map_location: Any = "cpu") -> Any:
    path = _local_path(filename)
    verify_checkpoint_file(path)
    checkpoint = _torch_load_weights_only(path, filename, map_location)
    check_checkpoint_values(checkpoint, filename)
    return checkpoint


def load_checkpoint_safely(filename: str, map_location: Any = "cpu") -> Any:
    """Load a checkpoint the way every mmsoft load does: ``weights_only=True`` passed explicitly (so no environment
    variable can switch it off) with the mmengine / reference allowlist, a local file verified first
    (:func:`verify_checkpoint_file`), the values checked after (:func:`check_checkpoint_values`).

    ``filename``: a local path or anything mmengine's ``CheckpointLoader`` resolves (``https://``, ``s3://``, ...).
    Raises :class:`CheckpointError` naming the file and what is wrong.
    """
    if _local_path(filename) is not None:
        return _load_local(filename, map_location)
    from mmengine.runner import CheckpointLoader

    return _remote_loader(CheckpointLoader.load_checkpoint)(filename, map_location)


def _remote_loader(loader: Callable) -> Callable:
    """``loader`` (an mmengine scheme loader) run under :func:`forced_weights_only`, its result value-checked."""
    if getattr(loader, "_mmsoft_safe", False):
        return loader

    def load(filename: str, map_location: Any = None) -> Any:
        try:
            with forced_weights_only():
                checkpoint = loader(filename, map_location)
        except pickle.UnpicklingError as err:
            raise _refused(filename, err) from None
        check_checkpoint_values(checkpoint, filename)
        return checkpoint

    load.__name__ = loader.__name__  # mmengine logs the scheme from the name ('load_from_http' -> 'http')
    load._mmsoft_safe = True  # type: ignore[attr-defined]
    return load


def load_from_local(filename: str, map_location: Any = None) -> Any:
    """mmengine ``CheckpointLoader`` scheme for local files: :func:`load_checkpoint_safely`'s local path."""
    return _load_local(filename, map_location)


load_from_local._mmsoft_safe = True  # type: ignore[attr-defined]


def use_safe_checkpoint_loading() -> None:
    """Route every load through mmengine's ``CheckpointLoader`` in this process (runner ``load_from`` / resume,
    ``load_checkpoint``, mmdet / mmseg inferencers) through :func:`load_checkpoint_safely`'s checks: local files
    verified and loaded with ``weights_only=True``, every other scheme under :func:`forced_weights_only`.

    For mmsoft's command-line tools, which own their process; idempotent. ``import mmsoft`` alone only installs the
    allowlist and leaves mmengine's loaders as they are.
    """
    from mmengine.runner import CheckpointLoader

    allow_reference_checkpoint_types()
    schemes = dict(CheckpointLoader._schemes)  # mmengine keeps no public list of its schemes
    for prefix, loader in schemes.items():
        safe = load_from_local if prefix == "" else _remote_loader(loader)
        if safe is not loader:
            CheckpointLoader.register_scheme(prefixes=prefix, loader=safe, force=True)


def describe_shape_mismatch(key: str, got: tuple, want: tuple, in_channels: int) -> str:
    """``'<key>: checkpoint <got>, model <want>'``, plus what to set when the tensor is an input convolution of a
    model taking ``in_channels`` channels and the checkpoint was trained on images with another number."""
    text = f"{key}: checkpoint {got}, model {want}"
    if len(got) == len(want) == 4 and got[0] == want[0] and got[2:] == want[2:] and want[1] == in_channels:
        text += (f" (the checkpoint was trained on {got[1]}-channel images, the model takes {in_channels}: set "
                 f"model.backbone.in_channels={got[1]} and {got[1]} data_preprocessor mean/std values to use it, or "
                 f"use a checkpoint trained on {in_channels}-channel images)")
    return text

"""Checkpoints as single, self-verifying objects in the store.

An object is one JSON header line and a ``torch.save`` payload::

    ADASEG-CKPT {"format": "adaseg-checkpoint/v1", "sha256": "...", "size": 123}\\n<payload>

The header's checksum and size are checked before anything is unpickled, so a
corrupt or truncated object (a pod killed mid-upload on a store without atomic
writes, a bit flip, a wrong file) is a :class:`CheckpointError` naming the
object, never a half-loaded model. The payload holds only tensors and plain
Python values and is read with ``weights_only=True``: loading a checkpoint
cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from controller_service.contract.store import ObjectNotFound, ObjectStore, StoreError

FORMAT = "adaseg-checkpoint/v1"
MAGIC = b"ADASEG-CKPT "
_MAX_HEADER = 4096


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the object."""


@dataclass
class Checkpoint:
    """Everything needed to continue training exactly where it stopped."""

    model_name: str
    model_config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    # Trainer.state_dict(): optimizer, AMP scaler, global iteration, run length.
    trainer_state: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None
    weights: dict[str, float] | None = None
    run: str | None = None
    round: int | None = None
    member: int | None = None
    # Anything else worth keeping: strategy state, epoch, losses.
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and ``random`` generator states, as tensors and lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """Header line with format, SHA-256 and size, then the torch payload."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **asdict_shallow(checkpoint)}, buffer)
    payload = buffer.getvalue()
    header = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def asdict_shallow(checkpoint: Checkpoint) -> dict[str, Any]:
    """The dataclass as a dict without deep-copying tensors (``asdict`` would copy them)."""
    return {f.name: getattr(checkpoint, f.name) for f in fields(checkpoint)}


def decode_checkpoint(data: bytes, name: str) -> Checkpoint:
    """Verify and load an encoded checkpoint; ``name`` (its URI) goes into every error."""
    newline = data.find(b"\n", 0, _MAX_HEADER)
    if not data.startswith(MAGIC) or newline < 0:
        raise CheckpointError(f"{name} is not an adaseg checkpoint (no {MAGIC.decode()!r} header)")
    try:
        header = json.loads(data[len(MAGIC) : newline])
        expected_sha, expected_size = str(header["sha256"]), int(header["size"])
        format_ = header["format"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{name} has a corrupt checkpoint header: {exc}") from None
    if format_ != FORMAT:
        raise CheckpointError(f"{name} has checkpoint format {format_!r}; expected {FORMAT!r}")
    payload = data[newline + 1 :]
    if len(payload) != expected_size:
        raise CheckpointError(
            f"{name} is truncated or padded: payload {len(payload)} bytes, header says "
            f"{expected_size}"
        )
    if hashlib.sha256(payload).hexdigest() != expected_sha:
        raise CheckpointError(f"{name} is corrupt: SHA-256 does not match its header")
    try:
        content = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # a payload that hashes right but is not ours
        raise CheckpointError(f"{name} could not be unpickled: {exc}") from None
    content.pop("format", None)
    known = {f.name for f in fields(Checkpoint)}
    try:
        return Checkpoint(**{key: value for key, value in content.items() if key in known})
    except TypeError as exc:
        raise CheckpointError(f"{name} misses checkpoint fields: {exc}") from None


def save_checkpoint(store: ObjectStore, key: str, checkpoint: Checkpoint) -> str:
    """Write the checkpoint as one object (atomic in both stores); returns its URI."""
    store.put(key, encode_checkpoint(checkpoint))
    return store.uri_of(key)


def load_checkpoint(store: ObjectStore, key_or_uri: str) -> Checkpoint:
    """Read and verify a checkpoint by key or by absolute URI inside ``store``."""
    key = store.key_of(key_or_uri) if "://" in key_or_uri else key_or_uri
    name = store.uri_of(key)
    try:
        data = store.get(key)
    except ObjectNotFound:
        raise CheckpointError(f"checkpoint {name} does not exist") from None
    except StoreError as exc:
        raise CheckpointError(f"checkpoint {name} could not be read: {exc}") from exc
    return decode_checkpoint(data, name)

"""Pretrained weights through timm's Hugging Face Hub loading, with a fast offline probe."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .state_dicts import adapt_state_dict, load_strict, one_line

logger = logging.getLogger(__name__)

_DEFAULT_HUB_PROBE_TIMEOUT_S = 3.0
_TRUE_VALUES = {"1", "on", "yes", "true"}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE_VALUES


def _hub_offline_reason() -> str | None:
    """Return why the Hub should be treated as offline, or None when it looks reachable."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
    return _probe_hub()


def _hub_endpoint() -> str:
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants

        return constants.ENDPOINT
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _probe_hub() -> str | None:
    """Return why a TCP connection to the Hub (or its proxy) fails, or None when it succeeds."""
    # huggingface_hub retries unreachable hosts with back-off (about a minute per model offline),
    # so one short connection attempt decides whether to go through it at all.
    try:
        timeout = float(os.environ.get("PATCHGUARD_HUB_TIMEOUT", _DEFAULT_HUB_PROBE_TIMEOUT_S))
    except ValueError:
        timeout = _DEFAULT_HUB_PROBE_TIMEOUT_S
    url = urllib.parse.urlsplit(_hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname or host, proxy_url.port or 80

    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"cannot connect to {host}:{port} ({one_line(exc)})")

    # A thread bounds DNS resolution too, which socket timeouts do not cover.
    thread = threading.Thread(target=connect, name="patchguard-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not outcome:
        return f"cannot connect to {host}:{port} (timed out after {timeout:g} s)"
    return outcome[0]


@contextlib.contextmanager
def _hub_offline_mode() -> Iterator[None]:
    """Temporarily put huggingface_hub in offline mode so only its local cache is used."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    # huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constant is what counts.
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _has_pretrained_source(cfg: Any) -> bool:
    if cfg is None:
        return False
    getter = cfg.get if isinstance(cfg, Mapping) else lambda key: getattr(cfg, key, None)
    return any(getter(key) for key in ("hf_hub_id", "url", "file", "state_dict"))


def load_from_hub(model: torch.nn.Module, backbone: str) -> str:
    """Load timm's pretrained weights for ``backbone`` into ``model``; return their source."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": getattr(model, "num_classes", 0)}
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        kwargs["img_size"] = tuple(img_size)
    offline_reason = _hub_offline_reason()
    if offline_reason:
        logger.debug(
            "Hugging Face Hub treated as offline (%s); trying its local cache", offline_reason
        )
    with _hub_offline_mode() if offline_reason else contextlib.nullcontext():
        pretrained = timm.create_model(backbone, pretrained=True, **kwargs)
    cfg = getattr(pretrained, "pretrained_cfg", None)
    # Older timm versions only warn and keep a random init when no weights are registered.
    if not _has_pretrained_source(cfg):
        raise LookupError(f"timm has no pretrained weights registered for {backbone!r}")
    state_dict = adapt_state_dict(pretrained.state_dict(), model)
    load_strict(model, state_dict, f"timm pretrained weights for {backbone!r}")
    hub_id = cfg.get("hf_hub_id") if isinstance(cfg, Mapping) else None
    where = f"hf-hub:{hub_id}" if hub_id else "timm"
    cached = " (local Hugging Face cache)" if offline_reason else ""
    return f"timm pretrained weights {backbone!r} from {where}{cached}"

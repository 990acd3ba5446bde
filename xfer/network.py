"""Whether the Hugging Face Hub can be reached: one reading of HF_HUB_OFFLINE and of a failed connection for every
module that downloads or uploads (sources, `hf:` data, `xfer push`), so an offline machine fails at once and says so."""

from __future__ import annotations

import os

from xfer.errors import XferError


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read at call time with huggingface_hub's own reading of it ("1", "true", "yes", "on"): the
    hub library reads it once at import, so a variable set later would otherwise be ignored."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def is_network_error(err: BaseException) -> bool:
    """Whether a download failed for want of a network (or of the hub's local cache when offline), looking through
    the chain of causes: only then is "this machine looks offline" the right message."""
    import socket

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        names = " ".join(t.__name__ for t in type(err).__mro__)
        if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror, socket.timeout)) or any(
                k in names for k in ("ConnectError", "ConnectionError", "Timeout", "LocalEntryNotFound",
                                     "OfflineModeIsEnabled", "NetworkError", "ProxyError")):
            return True
        err = err.__cause__ or err.__context__
    return False


def require_hub(what: str, retry: str, timeout: float = 5.0) -> None:
    """Fail at once, naming `what` needed the Hub and how to `retry`, when HF_HUB_OFFLINE is set or one request to
    the Hub's endpoint cannot connect (through the proxy settings the hub library itself uses), instead of letting a
    download or upload retry for minutes."""
    if hub_offline():
        raise XferError(f"{what} needs the Hugging Face Hub, but HF_HUB_OFFLINE is set. {retry}")
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # any answer at all (even an error status) means the Hub was reached
        if not is_network_error(e):
            raise
        raise XferError(f"{what} needs the Hugging Face Hub, but {constants.ENDPOINT} cannot be reached "
                        f"({type(e).__name__}: {str(e)[:160]}). This machine looks offline. {retry}") from e

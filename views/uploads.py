"""Uploads held in the server's memory, freed with their session.

Streamlit keeps every uploaded file in the server's memory until the session that sent it shuts down, and a
closed tab's session shuts down only when Streamlit next touches its stored sessions after
``server.disconnectedSessionTTL`` (the grace a tab has to reconnect): on a quiet class server, much later or
never. A student who sent 5 x 300 MB straight to the upload route, attached to no widget, kept 1.5 GB of the
server's memory 20 minutes after closing the tab.

``start_sweeper`` runs one thread in the server process that frees the uploads of every session that has been
gone (no open websocket) for that grace: a tab that reconnects within it keeps its files, as Streamlit intends.
"""

from __future__ import annotations

import threading
import time

_GRACE_DEFAULT_S = 120.0
_started = threading.Event()


def _grace_s() -> float:
    from streamlit import config

    try:
        return max(0.0, float(config.get_option("server.disconnectedSessionTTL")))
    except (TypeError, ValueError):
        return _GRACE_DEFAULT_S


def sweep(gone_since: dict[str, float], now: float | None = None) -> int:
    """Free the uploads of sessions gone for the grace; ``gone_since``: when each was first seen gone (kept by
    the caller between sweeps). Returns how many sessions' files were freed."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return 0
    runtime, now = Runtime.instance(), time.monotonic() if now is None else now
    manager = runtime.uploaded_file_mgr
    storage = getattr(manager, "file_storage", None)  # MemoryUploadedFileManager's: session id -> its files
    if not isinstance(storage, dict):
        return 0
    freed, holding = 0, list(storage)
    for session_id in holding:
        if runtime.is_active_session(session_id):
            gone_since.pop(session_id, None)
            continue
        if now - gone_since.setdefault(session_id, now) >= _grace_s():
            manager.remove_session_files(session_id)
            gone_since.pop(session_id, None)
            freed += 1
    for session_id in set(gone_since) - set(holding):  # freed by Streamlit meanwhile
        gone_since.pop(session_id, None)
    return freed


def start_sweeper() -> None:
    """Start the sweeping thread once per server process (a daemon: it ends with the server)."""
    if _started.is_set():
        return
    _started.set()

    def loop() -> None:
        gone_since: dict[str, float] = {}
        while True:
            time.sleep(max(1.0, min(30.0, _grace_s() / 2)))
            try:
                sweep(gone_since)
            except Exception:  # a sweep that fails is tried again: it must never end the thread
                gone_since.clear()

    threading.Thread(target=loop, name="effnet-upload-sweeper", daemon=True).start()

"""A graceful stop: SIGTERM (systemd, Kubernetes) or SIGINT starts it, the service finishes it.

uvicorn handles these signals itself: it stops accepting connections and waits for requests in
flight. `on_termination` adds one step in front, without replacing uvicorn's handler: the
service hears of the stop at once, so it can refuse new jobs and give the running ones a grace
period (AudioDownloader.begin_shutdown).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import threading
from collections.abc import Callable
from types import FrameType

from diarization_audio.processes import end_with_parent

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_termination(callback: Callable[[], None]) -> Callable[[], None]:
    """Run `callback` in this event loop when SIGTERM or SIGINT arrives, then pass the signal on
    to the handler that was there before (uvicorn's). Returns the function that undoes this.

    Signal handlers can only be set from the main thread; elsewhere (an app driven by a test
    client) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        prior = previous[signal.Signals(signum)]
        if callable(prior):
            prior(signum, frame)
        elif prior == signal.SIG_DFL:
            signal.default_int_handler(signum, frame)

    for sig in SIGNALS:
        signal.signal(sig, handler)

    def undo() -> None:
        for sig, prior in previous.items():
            signal.signal(sig, prior)

    return undo


def stop_with_supervisor() -> None:
    """In a process started by a supervisor (`uvicorn --workers N`, `--reload`), start a graceful
    stop (SIGTERM) when the supervisor ends, however it ends: uvicorn's workers would otherwise
    serve on, unsupervised, after their supervisor was killed. Call it from the main thread
    (the kernel keeps the request with the thread that made it); elsewhere it does nothing.
    """
    supervised = multiprocessing.parent_process() is not None
    if supervised and threading.current_thread() is threading.main_thread():
        end_with_parent(signal.SIGTERM)

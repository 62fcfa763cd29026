"""The thread long SQL texts are parsed on (router/core/classify.py): a large stack, off the event
loop. A deeply nested expression (`1+1+...+1`, 2 characters a level) overflows the event loop
thread's stack inside pglast and kills the process, and a long text can take seconds."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from router.core.classify import INLINE_PARSE_MAX

__all__ = ["INLINE_PARSE_MAX", "on_parser_thread", "start_parser"]

# Texts over INLINE_PARSE_MAX (router/core/classify.py) come here. The stack held 1 MiB of
# `1+1+...` (524,288 levels) with room to spare (measured: it needed under 256 MiB; the stack
# is only reserved, not used).
_PARSER_STACK_BYTES = 512 * 1024 * 1024
_parser_queue: queue.SimpleQueue[tuple[Callable[[str], Any], str, Future[Any]]] | None = None
_parser_lock = threading.Lock()


def start_parser() -> None:
    """Start the parser thread now (the router does at start-up, before other threads: the
    stack size is set process-wide while it is created). Called again, it does nothing."""
    _parse_later(None)


def _parse_later(job: tuple[Callable[[str], Any], str, Future[Any]] | None) -> None:
    global _parser_queue
    with _parser_lock:
        if _parser_queue is None:
            _parser_queue = queue.SimpleQueue()
            previous = threading.stack_size(_PARSER_STACK_BYTES)
            try:
                # A daemon: a parse still running at exit does not hold the process up.
                threading.Thread(target=_parser_loop, args=(_parser_queue,),
                                 name="georoute-parser", daemon=True).start()
            finally:
                threading.stack_size(previous)
    if job is not None:
        _parser_queue.put(job)


def _parser_loop(jobs: queue.SimpleQueue[tuple[Callable[[str], Any], str, Future[Any]]]) -> None:
    while True:
        fn, sql, future = jobs.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(fn(sql))
        except BaseException as exc:
            future.set_exception(exc)


def on_parser_thread(fn: Callable[[str], Any], sql: str) -> Future[Any]:
    future: Future[Any] = Future()
    _parse_later((fn, sql, future))
    return future

"""gRPC's standard health service, with Watch updates sent by one thread of its own, outside the lock.

grpc_health's reference servicer sends each Watch update while it holds its lock, and a send waits
for the server's event thread; that same thread runs the close callback of a Watch that ended,
which takes the lock. A watcher leaving while a status changes (an index loading, the server
entering shutdown) therefore stops the server's event thread for good: every call on the port
hangs. Here a status change only records the status and queues the service's name (once, however
often it changes before the sender gets to it); one sender thread reads the latest status and
sends it to each watcher with no lock held. ``set`` never waits for the network, and each watcher
gets updates in order, ending with the latest.

A watcher that stops reading can hold the sender once gRPC's flow-control window is full
(thousands of updates): the other watchers' updates wait behind it; ``Check`` never does.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

Send = Callable[[Any], Any]  # gRPC's send_response_callback: a response, or None to end the call
_STOP = object()
_END_WATCHES = object()
_SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FLUSH_SECONDS = 1.0  # how long shutdown waits for NOT_SERVING to reach the watchers


class HealthService(health.HealthServicer):  # type: ignore[misc]
    _gracefully_shutting_down: bool  # the reference's own state, kept

    def __init__(self) -> None:
        super().__init__(experimental_non_blocking=True)
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None  # started by the first update
        self._pending: set[str] = set()  # services whose watchers are owed the latest status

    def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext, send_response_callback: Any = None
    ) -> Any:
        send: Send | None = send_response_callback
        if send is None:  # a server without non-blocking streams: the reference's thread per watcher
            return super().Watch(request, context)
        service = request.service
        with self._lock:
            self._send_response_callbacks.setdefault(service, set()).add(send)
        if not context.add_callback(self._on_close_callback(send, service)):
            self._forget(send, service)  # the call ended already
            return None
        self._post((service, send))  # its first answer: the status when the sender gets to it
        return None

    def _on_close_callback(self, send: Send, service: str) -> Callable[[], None]:
        def closed() -> None:  # runs on gRPC's event thread: takes the lock only briefly
            self._forget(send, service)
            send(None)

        return closed

    def _forget(self, send: Send, service: str) -> None:
        with self._lock:
            self._send_response_callbacks.get(service, set()).discard(send)

    def set(self, service: str, status: int) -> None:
        with self._lock:
            if self._gracefully_shutting_down:
                return
            self._server_status[service] = status
            self._owe(service)

    def enter_graceful_shutdown(self, timeout: float = FLUSH_SECONDS) -> None:
        """Every service NOT_SERVING for good, then every Watch ended (status OK), so that open
        watches do not hold the server's stop for its grace period; waits up to ``timeout`` for it."""
        with self._lock:
            if self._gracefully_shutting_down:
                return
            for service in self._server_status:
                self._server_status[service] = _NOT_SERVING
                self._owe(service)
            self._gracefully_shutting_down = True
            if any(self._send_response_callbacks.values()):
                self._post(_END_WATCHES)
        self.flush(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every update queued so far was sent; False if ``timeout`` passed first."""
        with self._lock:
            if self._sender is None:  # nothing was ever queued (or the sender was closed)
                return True
            sent = threading.Event()
            self._work.put(sent)
        return sent.wait(timeout)

    def close(self) -> None:
        """Stop the sender thread (after the servers using this servicer have stopped)."""
        with self._lock:
            sender, self._sender = self._sender, None
        if sender is not None:
            self._work.put(_STOP)
            sender.join(FLUSH_SECONDS)

    def _owe(self, service: str) -> None:
        """Queue the service once however often it changes: the sender sends whatever is latest.
        A service nobody watches owes nothing (and a server that no one watches starts no thread)."""
        if service not in self._pending and self._send_response_callbacks.get(service):
            self._pending.add(service)
            self._post((service, None))

    def _post(self, work: Any) -> None:
        with self._lock:
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_updates, name="flux-health-watch", daemon=True)
                self._sender.start()
            self._work.put(work)

    def _send_updates(self) -> None:
        while (work := self._work.get()) is not _STOP:
            if isinstance(work, threading.Event):
                work.set()
                continue
            if work is _END_WATCHES:
                with self._lock:
                    ending = [send for sends in self._send_response_callbacks.values() for send in sends]
                self._send_each(ending, None)
                continue
            service, only = work
            with self._lock:
                if only is None:
                    self._pending.discard(service)
                status = self._server_status.get(service, _SERVICE_UNKNOWN)
                watching = self._send_response_callbacks.get(service, set())
                sends = list(watching) if only is None else [only] if only in watching else []
            self._send_each(sends, health_pb2.HealthCheckResponse(status=status))

    @staticmethod
    def _send_each(sends: list[Send], response: health_pb2.HealthCheckResponse | None) -> None:
        for send in sends:
            try:
                send(response)
            except Exception:  # one broken call must not silence the others
                log.debug("health watch update failed", exc_info=True)

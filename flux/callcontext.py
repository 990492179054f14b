"""What the interceptors know about the call in progress: its request id and who made it.

gRPC runs each call's interceptors and handler in one ``contextvars.Context`` of its own,
so a value set by one interceptor is seen by the others and by the handler, and never
leaks into another call.
"""

from __future__ import annotations

from contextvars import ContextVar

#: Sent back to the caller in trailing metadata, and accepted from it to join up logs.
REQUEST_ID_KEY = "x-request-id"

request_id: ContextVar[str] = ContextVar("flux_request_id", default="")
#: The name of the token the call authenticated with ("" when auth is off or the call is open).
principal: ContextVar[str] = ContextVar("flux_principal", default="")

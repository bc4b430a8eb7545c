"""A client for twinreg, the gateway that writes service instances to etcd and Consul.

Standard library only (``ssl``, ``http.client``, ``json``, ``threading``)::

    import twinreg

    client = twinreg.Client("https://twinreg.internal:8443",
                            cert="orders.pem", key="orders-key.pem", ca="ca.pem")
    with twinreg.KeepAlive(client, "orders", "ord-1", "10.0.0.7", 8080, ttl_seconds=15) as ka:
        ka.wait_registered(timeout=30)
        for listing in client.watch("billing"):
            print([i.host_port for i in listing.instances])

Errors are :class:`TwinregError` (twinreg's ``code``, ``field``, ``message``, ``status``,
``retry_after``, ``registries``; a subclass per code) or :class:`TransportError`. The REST
contract is docs/api.md in the twinreg repository.
"""

import logging

from ._backoff import Backoff, retry_delay
from ._client import (
    DEFAULT_TIMEOUT,
    LONG_POLL_WAIT,
    Client,
    Drained,
    Heartbeat,
    Instance,
    Listing,
    Registration,
    tls_context,
)
from ._errors import (
    ConfigurationError,
    Error,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestTimeoutError,
    TransportError,
    TwinregError,
    UnavailableError,
    UnknownInstanceError,
    parse_retry_after,
)
from ._keepalive import DEREGISTER_BUDGET, KeepAlive
from ._version import __version__

logging.getLogger("twinreg").addHandler(logging.NullHandler())

__all__ = [
    "Backoff",
    "Client",
    "ConfigurationError",
    "DEFAULT_TIMEOUT",
    "DEREGISTER_BUDGET",
    "Drained",
    "Error",
    "ForbiddenError",
    "Heartbeat",
    "Instance",
    "InvalidRequestError",
    "KeepAlive",
    "LONG_POLL_WAIT",
    "Listing",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "Registration",
    "RequestTimeoutError",
    "TransportError",
    "TwinregError",
    "UnavailableError",
    "UnknownInstanceError",
    "__version__",
    "parse_retry_after",
    "retry_delay",
    "tls_context",
]

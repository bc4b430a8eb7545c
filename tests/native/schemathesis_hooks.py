"""schemathesis hooks for tests/api/openapi.rs.

A generated long poll may carry a `wait` of minutes, and one that comes with the `index` of an
earlier answer waits that long (as it should), five minutes when `wait` is left out: a valid
`wait` is cut to one second, and an `index` without one gets one second, before the request is
sent, so the run stays short. Invalid ones are left alone (they must still be refused).
"""

import re

import schemathesis

VALID_WAIT = re.compile(r"^([0-9]{1,9}(ms|s|m|h))+$")


@schemathesis.hook
def before_call(context, case, **kwargs):
    query = case.query
    if not query:
        return
    wait = query.get("wait")
    if (isinstance(wait, str) and VALID_WAIT.match(wait)) or ("index" in query and wait is None):
        query["wait"] = "1s"

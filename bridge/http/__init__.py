"""Our small HTTP/1.1 server and the hot path's client, on trio: limits, timeouts, keep-alive,
routing; strict readers of what comes off the wire."""

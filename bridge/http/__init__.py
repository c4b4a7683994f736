"""Our small HTTP/1.1 server: h11 over trio, with limits, timeouts, keep-alive and routing."""

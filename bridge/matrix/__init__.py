"""The Matrix wire: appservice endpoints, the client-server API client, registration files."""

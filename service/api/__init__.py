"""The HTTP transport: app wiring, routes per resource, request and response bodies, middleware."""

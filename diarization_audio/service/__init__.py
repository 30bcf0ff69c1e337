"""The HTTP service: the app, its routes, the dashboard and the metrics."""

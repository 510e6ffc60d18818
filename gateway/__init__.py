"""The HTTP edge: a Flask app that talks gRPC to auth and storage and publishes events."""

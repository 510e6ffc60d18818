"""The gateway's blueprints."""

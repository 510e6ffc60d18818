"""Notifier: emails the owner of each finished conversion job (see notifier.worker)."""

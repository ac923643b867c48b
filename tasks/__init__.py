"""Celery: the app and its configuration, the sending facade, and the task bodies.

The API imports only `tasks.send` (which imports `tasks.app`); task bodies are imported by
worker processes alone, so the API never loads workers/ or torch.
"""

"""Shared by every side of voicefarm: settings, storage, errors, text, webhooks signing."""

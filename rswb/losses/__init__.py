"""Losses: each returns a dict of named terms (``{"proxy_loss": ..., "cls_loss": ...}``)."""

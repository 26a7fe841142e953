"""Talking to registries: the async client a pull uses, and credentials for it."""

from fsnap.remotes.auth import Credentials
from fsnap.remotes.registry import RegistryClient
from fsnap.remotes.retry import RetryEvent

__all__ = ["Credentials", "RegistryClient", "RetryEvent"]

"""Exceptions a user can cause. Each names the bad value, so the message alone says what to fix."""

from __future__ import annotations


class WorkbenchError(ValueError):
    """Base class of the errors raised for bad user input (an unknown model, a missing head, ...)."""


class UnknownModelError(WorkbenchError):
    """A model name that is neither a zoo model, a named model, a local folder nor a reachable hub repo."""


class ContextLengthError(WorkbenchError):
    """A text longer than the model's context window."""


class HeadNotFoundError(WorkbenchError):
    """A (layer, head) pair outside the model."""


class DeviceError(WorkbenchError):
    """A CUDA-only option asked for on a machine or model without CUDA."""

"""The node's small error hierarchy.

Every unit of work (one C-STORE request, one study in the worker, one output in the sender, one CLI
command) catches :class:`SamieNodeError` in exactly one place, turns it into a DICOM status, a study
state or an exit code, logs it without PHI and carries on. Anything else is a bug and is logged with its
traceback by the same catcher.
"""

from __future__ import annotations


class SamieNodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(SamieNodeError):
    """The configuration (file, environment or command line) is invalid or names a missing file."""


class InvalidInputError(SamieNodeError):
    """A dataset, file or UID from outside cannot be used (hostile, truncated, unsupported)."""


class InvalidUidError(InvalidInputError):
    """A UID is malformed (not digits and dots, too long, path characters) or contradicts another."""


class UnsupportedImageError(InvalidInputError):
    """An image decodes badly or has a form the engine does not handle (photometric, size, syntax)."""


class NoImagesError(InvalidInputError):
    """A study has no instance the engine can process (all skipped by selection or undecodable)."""


class SpoolError(SamieNodeError):
    """The durable store could not take or give back data (disk full, I/O error)."""


class ModelError(SamieNodeError):
    """A model or checkpoint is missing, does not match its hash or cannot run on the device."""


class EncodeError(SamieNodeError):
    """A SEG, SR or secondary capture could not be built for a study."""


class DeliveryError(SamieNodeError):
    """A result could not be delivered to a peer.

    Parameters
    ----------
    message
        What went wrong, without PHI.
    transient
        True when a retry may succeed (peer down, association aborted, 0xA7xx, timeout).
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class AnnotationError(InvalidInputError):
    """A drawn region cannot become a box prompt (degenerate shape, missing image or frame, no geometry)."""

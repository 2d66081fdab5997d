"""Errors a user can act on. The CLI prints their message as a one-line reason."""


class ShortlistError(Exception):
    """Base class: a failure with a message that tells the user what to fix."""


class DataValidationError(ShortlistError):
    """The batch broke its data contract; it has been quarantined, nothing trained."""


class BundleError(ShortlistError):
    """A bundle is incomplete, tampered with, or does not match its manifest."""


class PromotionRefused(ShortlistError):
    """A promotion or rollback was refused; the live bundle is unchanged."""

"""The error hierarchy. Every message names the file, tensor, option or type at fault
and says what to do; the CLI turns these into one line and a non-zero exit code."""


class QConvertError(Exception):
    """Base of every error qconvert reports to a user."""

    exit_code = 1


class InputError(QConvertError):
    """A model directory, file or option that cannot be used as given."""

    exit_code = 2


class FormatError(InputError):
    """A file whose bytes do not follow its format (garbled JSON, truncated header...)."""


class UnsupportedError(QConvertError):
    """Something well-formed that qconvert does not handle (architecture, dtype, type)."""

    exit_code = 3


class ShapeError(QConvertError):
    """A tensor whose shape does not fit what the plan or kernel needs."""

    exit_code = 3


class BudgetError(QConvertError):
    """A size or VRAM budget that cannot be met."""

    exit_code = 4


class OutputExistsError(InputError):
    """The output path exists and --force was not given."""

"""The one exception type of the converter: a cause worth one line, and whether to retry.

`modelkiln convert` turns every failure into a single line on stderr and in the termination
log, and the operator decides from the exit code whether a retry may help (network, disk
space) or not (a corrupt model, a failed accuracy gate). Each converter module raises
`ConversionFailed` with the cause phrased for the person reading the InferenceModel status.
"""

from __future__ import annotations


class ConversionFailed(Exception):
    """A conversion cannot finish; `str(error)` is the one-line cause."""

    def __init__(self, cause: str, *, transient: bool = False) -> None:
        super().__init__(" ".join(cause.split()))
        self.transient = transient

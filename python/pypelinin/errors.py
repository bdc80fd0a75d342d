"""The exceptions pypelinin raises.

Every one derives from :class:`PypelininError`, so ``except PypelininError`` catches
anything the cluster refused or could not do.
"""


class PypelininError(Exception):
    """Something the cluster refused or could not do."""


class RouterUnavailable(PypelininError, ConnectionError):
    """The router did not answer: it is down, unreachable, or too slow.

    Raised after the client's patience (``timeout`` seconds, ``attempts`` times) ran
    out, never a hang.
    """


class PipelineRefused(PypelininError, ValueError):
    """The router (or the client, before sending) refused a pipeline; the message says why."""


class PipelineCycleError(PipelineRefused):
    """The pipeline's graph has a cycle, or no job to start with."""


class Timeout(PypelininError, TimeoutError):
    """A pipeline did not finish within the time waited for it."""

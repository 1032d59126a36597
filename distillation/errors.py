"""The one exception type for bad user input.

Raised anywhere before training starts; the CLIs turn it into a single line on stderr and
exit code 2, and nothing has been written by then.
"""


class InputError(Exception):
    """Bad input: a flag, a file or a model that cannot work. The message names which."""


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss on some rank); the last checkpoint is kept."""


class TeacherUnavailable(TrainingStopped):
    """The teacher stopped answering (a served one, past its retries): before a step the run
    stops at its boundary with a checkpoint; elsewhere (evaluation, a sampled step's request) the
    CLI says so in one line, exit code 1, and the last checkpoint is kept. Either way --resume
    continues once it answers again."""

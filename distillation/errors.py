"""The one exception type for bad user input.

Raised anywhere before training starts; the CLIs turn it into a single line on stderr and
exit code 2, and nothing has been written by then.
"""


class InputError(Exception):
    """Bad input: a flag, a file or a model that cannot work. The message names which."""


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss on some rank); the last checkpoint is kept."""


class TeacherUnavailable(RuntimeError):
    """The teacher stopped answering (a served one, past its retries): the run stops at a step
    boundary with a checkpoint, from which --resume continues once it answers again."""

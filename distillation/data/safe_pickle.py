"""Read the pickles our scripts and the reference's write, without running code from them.

`pickle.load` calls whatever function a file names (`os.system`, `eval`...) while it reads, so a
downloaded dataset pickle could run its author's code. These files only ever hold lists of
numpy integer arrays (binarized data) or of integers (token counts): the unpickler admits the
few numpy functions that rebuild an array from its bytes and refuses any other name before
anything is called. Callers still check the shape of what comes back.
"""

import pickle

from distillation.errors import InputError

# (module, name) pairs that numpy arrays, dtypes and scalars pickle to, under numpy 1 and 2
# and every pickle protocol (protocol 5 rebuilds arrays with _frombuffer; protocol 2 writes
# bytes through _codecs.encode).
ALLOWED = {
    (module, name)
    for package in ("numpy.core", "numpy._core")
    for module, name in ((f"{package}.multiarray", "_reconstruct"), (f"{package}.multiarray", "scalar"),
                         (f"{package}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _Refused(Exception):
    pass


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def load_data_pickle(path: str, flag: str, what: str):
    """The object pickled in `path`, read by the restricted unpickler. `what` says what the
    file should hold (named in errors)."""
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f).load()
    except _Refused as err:
        raise InputError(f"{flag}: '{path}' would call {err} when unpickled: refused without running it ({what} holds only "
                         "integers and numpy integer arrays)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, KeyError, ValueError, TypeError,
            MemoryError, OverflowError):
        raise InputError(f"{flag}: '{path}' is not {what}") from None

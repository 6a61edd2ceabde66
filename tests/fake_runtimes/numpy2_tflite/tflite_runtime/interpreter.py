"""tflite-runtime 2.14 under numpy 2: the import works, building an Interpreter does not.

The real wheel prints "A module that was compiled using NumPy 1.x cannot be run in NumPy
2.x" and then raises this ImportError from its C extension.
"""


class Interpreter:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise ImportError("numpy.core.multiarray failed to import")


def load_delegate(name: str) -> object:
    raise ValueError(f"cannot load {name}")

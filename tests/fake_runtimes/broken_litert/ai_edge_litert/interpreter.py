"""A LiteRT whose interpreter cannot be built (as a wheel built for another CPU would)."""


class Interpreter:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("illegal instruction in the XNNPACK kernels (broken build)")


def load_delegate(name: str) -> object:
    raise ValueError(f"cannot load {name}")

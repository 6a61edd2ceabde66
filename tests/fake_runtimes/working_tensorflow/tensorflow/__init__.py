"""A stand-in tensorflow whose tf.lite computes y = x + 1, enough for the runner's probe and
for a latency run on the probe model."""

from types import SimpleNamespace

import numpy as np

__version__ = "2.21.0-fake"


class Interpreter:
    def __init__(self, model_path=None, model_content=None, num_threads=None,
                 experimental_delegates=None):  # fmt: skip
        self._x = np.zeros((1, 4), np.float32)

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return [{"name": "x", "index": 0, "shape": np.array([1, 4]), "dtype": np.float32,
                 "quantization": (0.0, 0)}]  # fmt: skip

    def get_output_details(self):
        return [{"name": "y", "index": 1, "shape": np.array([1, 4]), "dtype": np.float32,
                 "quantization": (0.0, 0)}]  # fmt: skip

    def set_tensor(self, index, value):
        self._x = np.asarray(value, np.float32)

    def invoke(self):
        self._y = self._x + 1

    def get_tensor(self, index):
        return self._y


def _load_delegate(name):
    raise ValueError(f"cannot load {name}")


lite = SimpleNamespace(Interpreter=Interpreter,
                       experimental=SimpleNamespace(load_delegate=_load_delegate))  # fmt: skip

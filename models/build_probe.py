"""Build the on-device runner's probe model: y = x + 1 on float32[1, 4] (856 bytes).

The runner (bench/inference/runner_remote.py) embeds these bytes as base64 and runs them
before the model under test, to prove an interpreter works. Rebuild with the models venv
(see README.md) and compare: `python models/build_probe.py /tmp/probe.tflite && sha256sum
/tmp/probe.tflite` must print 04aad787adb629f04e4350c0ddea2ddff78d9216bad3bb140df29cbea5e2f6d0.
"""

import sys

import tensorflow as tf

tf.keras.utils.set_random_seed(0)


class AddOne(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def __call__(self, x):
        return {"y": x + tf.constant(1.0)}


module = AddOne()
converter = tf.lite.TFLiteConverter.from_concrete_functions(
    [module.__call__.get_concrete_function()], module
)
data = converter.convert()
with open(sys.argv[1], "wb") as out:
    out.write(data)
print(len(data))

"""Build fieldrig's benchmark models from scratch, reproducibly.

    /opt/fieldrig-models-venv/bin/python models/build.py            # build into models/
    /opt/fieldrig-models-venv/bin/python models/build.py --out DIR  # build somewhere else
    /opt/fieldrig-models-venv/bin/python models/build.py --check    # rebuild, compare with models/

Two model families, each as float32 and as full-integer int8 (.tflite):

- meter_anomaly: dense autoencoder over 64 readings (15-minute RMS voltage, 16 hours) of one
  smart meter, trained on normal windows only; score = reconstruction MSE.
- substation_cam: small CNN over 96x96x1 grayscale frames standing in for a substation camera,
  classes normal / smoke / arc_flash / intruder.

Everything comes from a seeded numpy Generator and TensorFlow; nothing is downloaded. The
quality recorded in manifest.yaml is measured on the converted .tflite files with the LiteRT
interpreter (ai_edge_litert), not on the Keras models. See models/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Determinism has to be in place before TensorFlow (or anything hashing strings) starts:
# a fixed hash seed, no oneDNN graph rewrites, quiet logs, no GPU. Re-exec once to apply them.
_ENV = {
    "PYTHONHASHSEED": "0",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TF_DETERMINISTIC_OPS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
}
if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in _ENV.items()):
    os.environ.update(_ENV)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import numpy as np  # noqa: E402
import yaml  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent
# The committed bytes come from exactly these versions (models/requirements.txt has them all).
PINS = {"tensorflow-cpu": "2.21.0", "keras": "3.15.1", "numpy": "2.4.6", "ai-edge-litert": "2.3.0"}
SEED = 20240311
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
Details = dict[str, Any]  # one entry of Interpreter.get_input_details()

# ---------------------------------------------------------------------------------------------
# meter_anomaly: synthetic smart-meter voltage windows
# ---------------------------------------------------------------------------------------------

WINDOW = 64  # samples per window
INTERVAL_H = 0.25  # 15-minute load-profile interval, so a window spans 16 hours
V_NOM = 230.0
V_SCALE = 23.0  # x = (V - 230) / 23: 1.0 is a 10 % deviation (EN 50160's band)
ANOMALY_KINDS = ("sag", "swell", "spike", "flatline")


def _bump(t: np.ndarray, centre: np.ndarray, width: float) -> np.ndarray:
    """A Gaussian bump on the 24-hour circle."""
    d = (t - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def meter_normal(rng: np.random.Generator, n: int) -> np.ndarray:
    """n normal windows of RMS voltage in volts, shape (n, WINDOW).

    A residential feeder: voltage dips at the morning and (deeper) evening load peaks, rises
    at midday where rooftop PV feeds in, sits at its own offset from nominal, wanders with the
    load, sometimes steps when the substation's tap changer operates, plus measurement noise
    and the meter's 0.1 V resolution.
    """
    start = rng.uniform(0.0, 24.0, (n, 1))
    t = (start + INTERVAL_H * np.arange(WINDOW)) % 24.0
    offset = np.clip(rng.normal(0.0, 2.5, (n, 1)), -6.0, 6.0)
    daily = rng.uniform(1.5, 4.0, (n, 1))  # highest in the small hours, lowest in the evening
    evening = rng.uniform(4.0, 9.0, (n, 1))
    morning = rng.uniform(1.5, 4.0, (n, 1))
    pv = rng.uniform(0.0, 8.0, (n, 1)) * (rng.random((n, 1)) < 0.6)
    v = (
        V_NOM
        + offset
        + daily * np.cos(2 * np.pi * (t - 3.5) / 24.0)
        - evening * _bump(t, rng.normal(19.5, 0.7, (n, 1)), rng.uniform(1.5, 2.5, (n, 1)))
        - morning * _bump(t, rng.normal(7.5, 0.5, (n, 1)), 1.2)
        + pv * _bump(t, rng.normal(13.0, 0.5, (n, 1)), 2.2)
    )
    k = np.arange(WINDOW)
    for _ in range(3):  # slow load wander
        period = rng.uniform(8.0, 32.0, (n, 1))  # in samples: 2 to 8 hours
        v += rng.uniform(0.0, 0.3, (n, 1)) * np.sin(
            2 * np.pi * k / period + rng.uniform(0, 2 * np.pi, (n, 1))
        )
    tap = rng.random(n) < 0.3  # on-load tap changer step
    at = rng.integers(4, WINDOW - 4, n)
    step = rng.uniform(1.5, 3.0, n) * rng.choice([-1.0, 1.0], n)
    v += np.where(tap[:, None] & (k >= at[:, None]), step[:, None], 0.0)
    v += rng.normal(0.0, 1.0, (n, WINDOW)) * rng.uniform(0.2, 0.6, (n, 1))
    return np.round(v, 1)


def meter_anomalous(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n anomalous windows (volts) and their kind index into ANOMALY_KINDS."""
    v = meter_normal(rng, n)
    kinds = np.arange(n) % len(ANOMALY_KINDS)
    rng.shuffle(kinds)
    for i, kind in enumerate(ANOMALY_KINDS[int(j)] for j in kinds):
        if kind in ("sag", "swell"):  # sustained under/overvoltage, 30 min to 2 h
            length = int(rng.integers(2, 9))
            s = int(rng.integers(0, WINDOW - length + 1))
            depth = rng.uniform(0.04, 0.25) if kind == "sag" else rng.uniform(0.04, 0.12)
            v[i, s : s + length] *= 1.0 - depth if kind == "sag" else 1.0 + depth
        elif kind == "spike":  # one or two single-interval transients
            for s in rng.choice(WINDOW, int(rng.integers(1, 3)), replace=False):
                v[i, s] *= 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.025, 0.10)
        else:  # stuck meter: repeats one reading for 4 hours or more
            s = int(rng.integers(0, WINDOW - 16))
            length = int(rng.integers(16, WINDOW - s + 1))
            v[i, s : s + length] = v[i, s]
    return np.round(v, 1), kinds


def meter_normalise(v: np.ndarray) -> np.ndarray:
    return ((v - V_NOM) / V_SCALE).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# substation_cam: synthetic 96x96 grayscale camera frames
# ---------------------------------------------------------------------------------------------

CAM_CLASSES = ("normal", "smoke", "arc_flash", "intruder")
H = W = 96
_ys, _xs = np.mgrid[0:H, 0:W].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise: a cells x cells Gaussian grid, bilinearly upsampled to H x W."""
    g = rng.standard_normal((cells + 1, cells + 1))
    pos = np.linspace(0.0, cells, H)
    i0 = np.minimum(np.floor(pos).astype(int), cells - 1)
    f = pos - i0
    rows = g[i0] * (1 - f)[:, None] + g[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _blob(cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((_xs - cx) / sx) ** 2 + ((_ys - cy) / sy) ** 2))


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, bool, float]:
    """Sky, ground, poles, wires and a transformer; day or night (IR, structures bright)."""
    night = bool(rng.random() < 0.35)
    sky = rng.uniform(25, 60) if night else rng.uniform(110, 200)
    ground = sky * rng.uniform(0.5, 0.9)
    horizon = rng.uniform(45, 70)
    img = np.where(_ys < horizon, sky - (horizon - _ys) * rng.uniform(-0.4, 0.6), ground)
    img = img + _smooth_noise(rng, 4) * rng.uniform(3, 12)
    struct = sky * (rng.uniform(1.2, 1.8) if night else rng.uniform(0.2, 0.6))
    for _ in range(int(rng.integers(1, 5))):  # poles
        x0, w, top = rng.uniform(4, 92), rng.uniform(1.0, 3.0), rng.uniform(5, 40)
        img = np.where((np.abs(_xs - x0) < w / 2) & (_ys > top), struct, img)
    for _ in range(int(rng.integers(0, 4))):  # overhead lines
        y0, sag = rng.uniform(8, 45), rng.uniform(0, 6)
        img = np.where(np.abs(_ys - (y0 + sag * ((_xs - 48) / 48) ** 2)) < 0.6, struct, img)
    if rng.random() < 0.7:  # transformer
        x0, y0, w, h = (
            rng.uniform(5, 60),
            rng.uniform(60, 80),
            rng.uniform(15, 30),
            rng.uniform(10, 18),
        )
        box = (_xs > x0) & (_xs < x0 + w) & (_ys > y0) & (_ys < y0 + h)
        img = np.where(box, ground * rng.uniform(0.4, 1.4), img)
    return img, night, sky


def cam_render(rng: np.random.Generator, label: int) -> np.ndarray:
    """One frame of class `label`, pixel values 0..255 (integers stored as float)."""
    img, night, sky = _scene(rng)
    if label == 0 and rng.random() < 0.35:  # distractors that resemble the events
        if rng.random() < 0.5:  # a lamp or sun glint: bright, but no flash glow
            sx, sy = rng.uniform(1.5, 4, 2)
            img = img + rng.uniform(30, 90) * _blob(
                rng.uniform(10, 86), rng.uniform(10, 60), sx, sy
            )
        else:  # haze
            img = img * 0.8 + 0.2 * rng.uniform(100, 200) + _smooth_noise(rng, 3) * 6
    elif label == 1:  # smoke: a textured plume rising and drifting, blending towards grey
        cx, cy = rng.uniform(15, 81), rng.uniform(40, 85)
        drift = rng.uniform(-1.5, 1.5)
        alpha = np.zeros_like(img)
        for k in range(int(rng.integers(3, 7))):
            r = rng.uniform(5, 10) + 3 * k
            alpha += _blob(cx + 6 * drift * k, cy - 8 * k, r, r * rng.uniform(0.7, 1.2))
        alpha = np.clip(alpha * (1 + 0.35 * _smooth_noise(rng, 8)), 0, 1) * rng.uniform(0.45, 0.85)
        grey = np.clip(sky + rng.choice([-1.0, 1.0]) * rng.uniform(55, 100), 60, 230)
        img = img * (1 - alpha) + grey * alpha
    elif label == 2:  # arc flash: a (near) saturated core, a wide glow, the scene brightens
        cx, cy = rng.uniform(10, 86), rng.uniform(15, 80)
        peak = rng.uniform(60, 255)
        core, glow = rng.uniform(1.0, 2.5, 2), rng.uniform(6, 20, 2)
        img = img + peak * _blob(cx, cy, *core) + 0.5 * peak * _blob(cx, cy, *glow)
        img = img + rng.uniform(0, 40)
    elif label == 3:  # intruder: a person's silhouette, dark by day, bright on IR at night
        hgt, cx, foot = rng.uniform(18, 42), rng.uniform(8, 88), rng.uniform(55, 94)
        top, wd = foot - hgt, hgt * rng.uniform(0.22, 0.32)
        head = (_xs - cx) ** 2 + (_ys - top - 0.09 * hgt) ** 2 < (0.09 * hgt) ** 2
        body = (np.abs(_xs - cx) < wd / 2) & (_ys > top + 0.17 * hgt) & (_ys < top + 0.6 * hgt)
        legs = (
            (np.abs(np.abs(_xs - cx) - 0.22 * wd) < 0.18 * wd)
            & (_ys >= top + 0.6 * hgt)
            & (_ys < foot)
        )
        person = head | body | legs
        around = img[person].mean()
        contrast = rng.uniform(35, 90) * (1.0 if night else -1.0)
        img = np.where(person, np.clip(around + contrast, 5, 250), img)
    img = img + rng.standard_normal(img.shape) * rng.uniform(0.8, 2.5)  # sensor noise
    return np.clip(np.round(img), 0, 255)


def cam_dataset(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n frames, classes balanced and shuffled: x (n, 96, 96, 1) float32, y (n,) int64."""
    y = np.arange(n) % len(CAM_CLASSES)
    rng.shuffle(y)
    x = np.stack([cam_render(rng, int(c)) for c in y]).astype(np.float32)[..., None]
    return x, y.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# data, training, conversion
# ---------------------------------------------------------------------------------------------


CAM_EPOCHS = 14
CAM_PER_EPOCH = 2400


def meter_data() -> dict[str, np.ndarray]:
    """Training windows (normal only), and the eval set: 150 normal, 150 anomalous, shuffled."""
    rng = np.random.default_rng([SEED, 1])
    train = meter_normalise(meter_normal(rng, 8000))
    normal = meter_normal(rng, 150)
    anomalous, kinds = meter_anomalous(rng, 150)
    order = rng.permutation(300)
    return {
        "train": train,
        "rep": train[:256],
        "x": meter_normalise(np.concatenate([normal, anomalous]))[order],
        "y": np.concatenate([np.zeros(150), np.ones(150)]).astype(np.int64)[order],
        "kind": np.concatenate([np.full(150, -1), kinds])[order],
    }


def cam_data() -> dict[str, np.ndarray]:
    """Eval set (200 frames, 50 per class) and the int8 calibration frames.

    Training frames are fresh every epoch (cam_epoch), so the CNN never sees a frame twice.
    """
    x, y = cam_dataset(np.random.default_rng([SEED, 2, 1]), 200)
    rep, _ = cam_dataset(np.random.default_rng([SEED, 2, 2]), 200)
    return {"x": x, "y": y, "rep": rep}


def cam_epoch(epoch: int) -> tuple[np.ndarray, np.ndarray]:
    return cam_dataset(np.random.default_rng([SEED, 2, 100 + epoch]), CAM_PER_EPOCH)


def _tf():  # type: ignore[no-untyped-def]
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    return tf


def train_meter(tf: Any, x: np.ndarray) -> Any:
    keras = tf.keras
    tf.keras.utils.set_random_seed(SEED + 1)
    inp = keras.Input((WINDOW,), name="window")
    h = keras.layers.Dense(32, activation="relu", name="enc1")(inp)
    z = keras.layers.Dense(4, name="code")(h)  # a narrow code: flat stretches must not fit
    h = keras.layers.Dense(32, activation="relu", name="dec1")(z)
    out = keras.layers.Dense(WINDOW, name="reconstruction")(h)
    model = keras.Model(inp, out, name="meter_anomaly")
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse")
    rng = np.random.default_rng([SEED, 101])
    epochs = 40
    for epoch in range(epochs):
        perm = rng.permutation(len(x))  # our own data order, fixed by the seed
        _fit(model, x[perm], x[perm], epoch, epochs, lr=2e-3, batch_size=64)
    return model


def train_cam(tf: Any) -> Any:
    keras = tf.keras
    tf.keras.utils.set_random_seed(SEED + 2)
    inp = keras.Input((H, W, 1), name="image")
    h = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inp)
    for i, filters in enumerate((12, 24, 32, 48)):
        h = keras.layers.Conv2D(
            filters, 3, strides=2, padding="same", use_bias=False, name=f"conv{i + 1}"
        )(h)
        h = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(h)
        h = keras.layers.ReLU(name=f"relu{i + 1}")(h)
    h = keras.layers.GlobalMaxPooling2D(name="pool")(h)
    out = keras.layers.Dense(len(CAM_CLASSES), activation="softmax", name="probs")(h)
    model = keras.Model(inp, out, name="substation_cam")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # Render the next epoch's frames on the second core while TensorFlow (one thread) trains.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(cam_epoch, 0)
        for epoch in range(CAM_EPOCHS):
            x, y = pending.result()
            if epoch + 1 < CAM_EPOCHS:
                pending = pool.submit(cam_epoch, epoch + 1)
            _fit(model, x, y, epoch, CAM_EPOCHS, lr=3e-3, batch_size=32)
    return model


def _fit(
    model: Any, x: np.ndarray, y: np.ndarray, epoch: int, epochs: int, lr: float, batch_size: int
) -> None:
    """One epoch in the order given, with a cosine learning-rate schedule."""
    model.optimizer.learning_rate.assign(lr * 0.5 * (1.0 + np.cos(np.pi * epoch / epochs)))
    hist = model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    if epoch == epochs - 1 or epoch % 5 == 0:
        stats = ", ".join(f"{k}={v[-1]:.4f}" for k, v in hist.history.items())
        print(f"  {model.name} epoch {epoch + 1}/{epochs}: {stats}", flush=True)


def convert(tf: Any, model: Any, input_name: str, rep: np.ndarray | None) -> bytes:
    """A batch-1 .tflite; full-integer int8 (int8 in and out) when rep data is given.

    Goes through a SavedModel (Keras 3's export): converting a tf.function that closes over a
    Keras 3 model leaves its weights as unfrozen resource variables in the .tflite.
    """
    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32, name=input_name)
    with tempfile.TemporaryDirectory(prefix="fieldrig-savedmodel-") as tmp:
        model.export(tmp, format="tf_saved_model", input_signature=[spec], verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if rep is not None:

            def representative() -> Any:
                for i in range(len(rep)):
                    yield [rep[i : i + 1]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return bytes(converter.convert())


# ---------------------------------------------------------------------------------------------
# evaluation of the converted files (LiteRT interpreter, the way a device runs them)
# ---------------------------------------------------------------------------------------------


def _quant(detail: Details) -> dict[str, float] | None:
    scale, zero_point = detail["quantization"]
    if scale == 0.0:
        return None
    return {"scale": float(scale), "zero_point": int(zero_point)}


def run_tflite(path: Path, x: np.ndarray) -> tuple[np.ndarray, list[Details], list[Details]]:
    """Outputs (dequantized float) for every sample of x, one invoke per sample, 1 thread."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    qin, qout = _quant(inp), _quant(out)
    outputs = []
    for i in range(len(x)):
        sample = x[i : i + 1]
        if qin is not None:  # quantize: round half to even, saturate
            q = np.round(sample / qin["scale"] + qin["zero_point"])
            sample = np.clip(q, -128, 127).astype(inp["dtype"])
        interp.set_tensor(inp["index"], sample)
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float64)
        if qout is not None:
            y = (y - qout["zero_point"]) * qout["scale"]
        outputs.append(y[0])
    return np.stack(outputs), interp.get_input_details(), interp.get_output_details()


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank-based ROC AUC (Mann-Whitney U); ties get their average rank."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    pos = label == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def anomaly_scores(outputs: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.mean((outputs - x.astype(np.float64)) ** 2, axis=tuple(range(1, x.ndim)))


# ---------------------------------------------------------------------------------------------
# output files
# ---------------------------------------------------------------------------------------------


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed's format with fixed zip timestamps, so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _details(details: list[Details]) -> list[dict[str, Any]]:
    return [
        {
            "name": str(d["name"]),
            "shape": [int(s) for s in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "quantization": _quant(d),
        }
        for d in details
    ]


TOLERANCE = {"auc": 0.02, "accuracy": 0.02}


def check_versions() -> list[str]:
    """Installed versions that differ from PINS (each one changes the bytes)."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for dist, pin in PINS.items():
        try:
            have = version(dist)
        except PackageNotFoundError:
            have = "not installed"
        if have != pin:
            wrong.append(f"{dist} {have} (pinned {pin})")
    return wrong


def build(out: Path) -> dict[str, Any]:
    """Build every model, eval set and the manifest into `out`; return the manifest."""
    for line in check_versions():
        print(f"WARNING: {line}: the files will not match the committed ones", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(exist_ok=True)
    data = {"meter_anomaly": meter_data(), "substation_cam": cam_data()}
    tf = _tf()
    t0 = time.monotonic()
    print("training meter_anomaly", flush=True)
    meter = train_meter(tf, data["meter_anomaly"]["train"])
    t1 = time.monotonic()
    print(f"training substation_cam ({t1 - t0:.0f} s so far)", flush=True)
    cam = train_cam(tf)
    print(f"trained in {time.monotonic() - t0:.0f} s", flush=True)

    entries = []
    for name, model, input_name, task in (
        ("meter_anomaly", meter, "window", "anomaly"),
        ("substation_cam", cam, "image", "classification"),
    ):
        d = data[name]
        write_npz(out / "eval" / f"{name}.npz", x=d["x"], y=d["y"])
        for variant, rep in (("float32", None), ("int8", d["rep"])):
            fname = f"{name}_{variant}.tflite"
            (out / fname).write_bytes(convert(tf, model, input_name, rep))
            outputs, ins, outs = run_tflite(out / fname, d["x"])
            if task == "anomaly":
                score = anomaly_scores(outputs, d["x"])
                value = roc_auc(score, d["y"])
                per_kind = {
                    kind: roc_auc(
                        score[(d["kind"] == -1) | (d["kind"] == k)],
                        d["y"][(d["kind"] == -1) | (d["kind"] == k)],
                    )
                    for k, kind in enumerate(ANOMALY_KINDS)
                }
                detail = ", ".join(f"{k} {v:.3f}" for k, v in per_kind.items())
                quality = {"metric": "auc", "value": value, "tolerance": TOLERANCE["auc"]}
            else:
                pred = np.argmax(outputs, axis=1)
                value = float(np.mean(pred == d["y"]))
                detail = ", ".join(
                    f"{c} {np.mean(pred[d['y'] == k] == k):.3f}" for k, c in enumerate(CAM_CLASSES)
                )
                quality = {"metric": "accuracy", "value": value, "tolerance": TOLERANCE["accuracy"]}
            size = (out / fname).stat().st_size
            print(f"{fname}: {size} bytes, {quality['metric']} {value:.4f} ({detail})", flush=True)
            entry: dict[str, Any] = {
                "name": name,
                "variant": variant,
                "file": fname,
                "sha256": sha256(out / fname),
                "task": task,
                "eval": f"eval/{name}.npz",
                "inputs": _details(ins),
                "outputs": _details(outs),
                "quality": quality,
            }
            if task == "classification":
                entry["classes"] = list(CAM_CLASSES)
            entries.append(entry)

    manifest = {"format": 1, "models": entries}
    header = (
        "# Generated by models/build.py -- do not edit by hand; see models/README.md.\n"
        "# Quality is measured on the .tflite files with ai_edge_litert's Interpreter.\n"
    )
    text = yaml.safe_dump(manifest, sort_keys=False, default_flow_style=None, width=100)
    (out / "manifest.yaml").write_text(header + text)
    return manifest


def check() -> int:
    """Rebuild into a temp dir; every file in models/ must come out byte-identical."""
    committed = yaml.safe_load((MODELS_DIR / "manifest.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="fieldrig-models-") as tmp:
        out = Path(tmp)
        build(out)
        problems = []
        for m in committed["models"]:
            fname = m["file"]
            rebuilt = sha256(out / fname) if (out / fname).exists() else "(not built)"
            here = sha256(MODELS_DIR / fname) if (MODELS_DIR / fname).exists() else "(missing)"
            if rebuilt != m["sha256"]:
                problems.append(f"{fname}: manifest sha256 {m['sha256']}, rebuilt {rebuilt}")
            if here != m["sha256"]:
                problems.append(f"{fname}: manifest sha256 {m['sha256']}, file in models/ {here}")
        for rel in [*sorted({m["eval"] for m in committed["models"]}), "manifest.yaml"]:
            a, b = MODELS_DIR / rel, out / rel
            if not a.exists() or a.read_bytes() != b.read_bytes():
                problems.append(f"{rel}: differs from the rebuilt one")
    if problems:
        print("models/build.py --check: FAILED, models/ is not what this script builds:")
        for p in problems:
            print(f"  {p}")
        for line in check_versions():
            print(f"  (a likely cause: {line}; see models/requirements.txt)")
        print("Rebuild with `models/build.py` (see models/README.md) and commit the result.")
        return 1
    print(f"models/build.py --check: OK, {len(committed['models'])} models rebuilt byte-identical")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="output dir (default models/)")
    parser.add_argument(
        "--check", action="store_true", help="rebuild in a temp dir and compare with models/"
    )
    args = parser.parse_args(argv)
    if args.check:
        return check()
    build(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

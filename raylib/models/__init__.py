"""Models of docs/method.md (sections 1-2): face backbones, the audio CNN, attention, fusion, enhancement.

The attention and fusion names are defined here once; jobs, sweeps and tests import them.
"""

ATTENTIONS: tuple[str, ...] = ("self", "relation", "transformer")
POOLINGS: tuple[str, ...] = ATTENTIONS + ("mean",)  # "mean": plain averaging, the baseline
FUSIONS: tuple[str, ...] = ("concat", "fbp")
MODALITIES: tuple[str, ...] = ("av", "visual", "audio")
VISUAL_MODALITIES: tuple[str, ...] = ("av", "visual")  # models with a visual branch: they read frames
AUDIO_MODALITIES: tuple[str, ...] = ("av", "audio")  # models with an audio branch
BACKBONES: tuple[str, ...] = ("mini_xception", "ir50", "resnet18", "vggface", "dlib_resnet")
BACKBONE_DIMS: dict[str, int] = {"ir50": 512, "resnet18": 512, "vggface": 4096, "dlib_resnet": 128,
                                 "mini_xception": 128}
FIXED_INPUT_SIZES: dict[str, tuple[int, ...]] = {"ir50": (112, 224), "vggface": (224,), "mini_xception": (64,)}  # resnet18: any
PRETRAIN_META = "backbone.json"  # written beside backbone.pt by jobs/pretrain.py (its recipe)
ENHANCEMENTS: tuple[str, ...] = ("basic", "mean", "meanstd", "meanstd2", "normfft", "ar-mean")

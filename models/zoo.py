"""The model zoo: an app's `model.arch` -> its splittable model (`models.splittable.Splittable`).

    vgg16_bn                         models.vgg.VGG (a chain of 13 conv blocks, physically pruned)
    resnet18, 34, 50, 101, 152       torchvision's ResNet, every width times `model.width`
    mobilenet_v2                     torchvision's MobileNetV2 (`width_mult`, last conv scaled too)
    any other torchvision classifier torchvision's builder with the app's classes and input channels;
                                     `model.width` where the family scales (WIDTH_KWARGS), else width 1

Every model but VGG is traced with torch.fx and split by `models.graph.GraphModel`. The scaled
models keep torchvision's classes and module names (`conv1`, `layer1.0.conv2`, `features.3.conv`...):
`ScaledResNet` only widens or narrows what `ResNet.__init__` builds. `model.stem: small` adapts the
stem to small inputs (32x32): the first conv becomes 3x3 stride 1 (ResNet keeps its max-pool), so
the model downsamples 16x instead of 32x. `model.in_channels` sets the first conv's inputs: the zoo
builds it so; for any other torchvision model `adapt_first_conv` replaces its first Conv2d (the first in
module order) by a fresh one (Kaiming init) with the app's input channels, the rest as torchvision has it.
Pretrained weights, when the app names them, are loaded afterwards (models/pretrained.py).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from apps import App
from apps.schema import ZOO_ARCHS, check_arch
from cli.errors import CoInferError


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _resnet_class():
    from torchvision.models.resnet import ResNet

    class ScaledResNet(ResNet):
        """torchvision's ResNet with the stem's 64 and the stages' 64..512 planes times `width`."""

        def __init__(self, block, layers: list[int], width: float, num_classes: int, in_channels: int,
                     small_stem: bool) -> None:
            object.__setattr__(self, "_width", width)  # read by _make_layer during ResNet.__init__
            object.__setattr__(self, "_stages", 0)
            super().__init__(block, layers, num_classes=num_classes)
            stem = scaled(64, width)
            self.conv1 = (nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False) if small_stem else
                          nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False))
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.bn1 = nn.BatchNorm2d(stem)
            self.fc = nn.Linear(scaled(512, width) * block.expansion, num_classes)

        def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
            if self._stages == 0:
                self.inplanes = scaled(64, self._width)  # the scaled stem's output feeds layer1
            object.__setattr__(self, "_stages", self._stages + 1)
            return super()._make_layer(block, scaled(planes, self._width), blocks, stride, dilate)

    return ScaledResNet


def resnet(app: App) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, Bottleneck
    block, layers = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
                     "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3]),
                     "resnet152": (Bottleneck, [3, 8, 36, 3])}[app.arch]
    return _resnet_class()(block, layers, app.width, app.num_classes, app.in_channels, app.stem == "small")


def mobilenet_v2(app: App) -> nn.Module:
    from torchvision.models.mobilenetv2 import MobileNetV2, _make_divisible
    from torchvision.ops.misc import Conv2dNormActivation
    model = MobileNetV2(num_classes=app.num_classes, width_mult=app.width)
    first = model.features[0][0]
    model.features[0][0] = nn.Conv2d(app.in_channels, first.out_channels, 3, 1 if app.stem == "small" else 2, 1,
                                     bias=False)
    last = _make_divisible(1280 * app.width, 8)  # torchvision keeps 1280 below width 1; scale it too
    if last != model.last_channel:
        cin = model.features[-1][0].in_channels
        model.features[-1] = Conv2dNormActivation(cin, last, kernel_size=1, activation_layer=nn.ReLU6)
        model.classifier[1] = nn.Linear(last, app.num_classes)
        model.last_channel = last
    for m in (model.features[0][0], model.features[-1][0]):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
    nn.init.normal_(model.classifier[1].weight, 0, 0.01)
    nn.init.zeros_(model.classifier[1].bias)
    return model


# torchvision families whose builders take a width multiplier, and its keyword
WIDTH_KWARGS = {"mobilenet_v3_small": "width_mult", "mobilenet_v3_large": "width_mult"}


def first_conv(module: nn.Module) -> str:
    """The qualified name of the first Conv2d in module order (the one the input meets in torchvision's
    classifiers)."""
    name = next((n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)), None)
    if name is None:
        raise CoInferError(f"{type(module).__name__} has no Conv2d to take the input channels")
    return name


def adapt_first_conv(module: nn.Module, in_channels: int) -> nn.Module:
    """`module` with its first Conv2d taking `in_channels` (a fresh conv, Kaiming init) when it takes another
    number; kernel, stride, padding, dilation and bias as before."""
    name = first_conv(module)
    conv = module.get_submodule(name)
    if conv.in_channels == in_channels:
        return module
    if conv.groups != 1:
        raise CoInferError(f"{type(module).__name__}: the first conv {name} is grouped; its input channels "
                           f"cannot be changed")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, new)
    return module


def torchvision_model(app: App) -> nn.Module:
    """Any other torchvision classification model: torchvision's builder (no weights) with the app's
    classes, its width where the family has one (WIDTH_KWARGS), its first conv adapted to the app's
    input channels."""
    import torchvision
    check_arch(app.arch)
    kwargs = {}
    if app.width != 1:
        if app.arch not in WIDTH_KWARGS:
            raise CoInferError(f"model.arch {app.arch} has no width multiplier (model.width must be 1); scaled: "
                               f"{', '.join(a for a in (*ZOO_ARCHS, *WIDTH_KWARGS) if a != 'vgg16_bn')}, vgg16_bn")
        kwargs[WIDTH_KWARGS[app.arch]] = app.width
    if app.stem != "imagenet":
        raise CoInferError(f"model.arch {app.arch}: only the zoo ({', '.join(ZOO_ARCHS)}) has the small stem; "
                           f"other torchvision models need stem imagenet")
    model = torchvision.models.get_model(app.arch, weights=None, num_classes=app.num_classes, **kwargs)
    return adapt_first_conv(model, app.in_channels)


BUILDERS: dict[str, Callable[[App], nn.Module]] = {
    "resnet18": resnet, "resnet34": resnet, "resnet50": resnet, "resnet101": resnet, "resnet152": resnet,
    "mobilenet_v2": mobilenet_v2,
}

"""The model zoo: an app's `model.arch` -> its splittable model (`models.splittable.Splittable`).

    vgg16_bn                         models.vgg.VGG (a chain of 13 conv blocks, physically pruned)
    resnet18, resnet34, resnet50     torchvision's ResNet, every width times `model.width`
    mobilenet_v2                     torchvision's MobileNetV2 (`width_mult`, last conv scaled too)
    any other torchvision classifier torchvision's builder as is (width 1, 3 input channels)

Every model but VGG is traced with torch.fx and split by `models.graph.GraphModel`. The scaled
models keep torchvision's classes and module names (`conv1`, `layer1.0.conv2`, `features.3.conv`...):
`ScaledResNet` only widens or narrows what `ResNet.__init__` builds. `model.stem: small` adapts the
stem to small inputs (32x32): the first conv becomes 3x3 stride 1 (ResNet keeps its max-pool), so
the model downsamples 16x instead of 32x. `model.in_channels` sets the first conv's inputs.
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
                     "resnet50": (Bottleneck, [3, 4, 6, 3])}[app.arch]
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


def torchvision_model(app: App) -> nn.Module:
    """Any other torchvision classification model, as torchvision builds it (no weights)."""
    import torchvision
    check_arch(app.arch)
    if app.width != 1 or app.in_channels != 3 or app.stem != "imagenet":
        raise CoInferError(f"model.arch {app.arch}: only the zoo ({', '.join(ZOO_ARCHS)}) scales width, input "
                           f"channels and stem; other torchvision models need width 1, in_channels 3, stem imagenet")
    return torchvision.models.get_model(app.arch, weights=None, num_classes=app.num_classes)


BUILDERS: dict[str, Callable[[App], nn.Module]] = {
    "resnet18": resnet, "resnet34": resnet, "resnet50": resnet, "mobilenet_v2": mobilenet_v2,
}


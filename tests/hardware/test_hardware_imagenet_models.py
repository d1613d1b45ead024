"""The ImageNet reference models that the hardware tests price: layer counts, names and MACs."""

from __future__ import annotations

import pytest
import torch

from mpq_rl.workloads.imagenet_models import mobilenet_v2, resnet18, resnet50
from mpq_rl.workloads.layers import discover_layers


def test_mobilenet_v2_has_53_quantizable_layers_with_torchvision_names():
    model = mobilenet_v2()
    layers = discover_layers(model, torch.zeros(1, 3, 224, 224))
    assert len(layers) == 53
    assert sum(layer.kind == "conv2d" for layer in layers) == 52
    assert layers.names[:4] == ["features.0.0", "features.1.conv.0.0", "features.1.conv.1", "features.2.conv.0.0"]
    assert layers.names[-2:] == ["features.18.0", "classifier.1"]
    assert sum(layer.is_depthwise for layer in layers) == 17
    assert layers.total_macs == pytest.approx(300.8e6, rel=0.01)  # torchvision: 0.30 GFLOPs
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision mobilenet_v2 parameter count
    assert {"features.1.conv.2.running_mean", "features.2.conv.3.weight", "classifier.1.bias"} <= set(
        model.state_dict()
    )


def test_resnets_match_torchvision_counts_and_names():
    r18, r50 = resnet18(), resnet50()
    assert sum(p.numel() for p in r18.parameters()) == 11_689_512
    assert sum(p.numel() for p in r50.parameters()) == 25_557_032
    keys = set(r50.state_dict())
    assert {"conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight", "layer4.2.bn3.running_var",
            "fc.weight"} <= keys  # fmt: skip
    layers = discover_layers(r18, torch.zeros(1, 3, 224, 224))
    assert len(layers) == 21 and layers.names[0] == "conv1" and layers.names[-1] == "fc"
    assert "layer2.0.downsample.0" in layers.names
    assert resnet18(num_classes=10).fc.out_features == 10

import pytest
import torch

from difflab.unet import (ClassConditionalUNet, Conv, ConvBlock, DownBlock, DownConv, FCBlock, Flatten,
                          TimeConditionalUNet, UnconditionalUNet, Unflatten, UpBlock, UpConv, build_model, one_hot)

D = 8


@pytest.mark.parametrize("op, x_shape, out_shape", [
    (Conv(1, D), (2, 1, 28, 28), (2, D, 28, 28)),
    (DownConv(D, D), (2, D, 28, 28), (2, D, 14, 14)),
    (UpConv(D, D), (2, D, 7, 7), (2, D, 14, 14)),
    (Flatten(), (2, 2 * D, 7, 7), (2, 2 * D, 1, 1)),
    (Unflatten(2 * D), (2, 2 * D, 1, 1), (2, 2 * D, 7, 7)),
    (ConvBlock(2 * D, D), (2, 2 * D, 28, 28), (2, D, 28, 28)),
    (DownBlock(D, 2 * D), (2, D, 14, 14), (2, 2 * D, 7, 7)),
    (UpBlock(4 * D, D), (2, 4 * D, 7, 7), (2, D, 14, 14)),
    (FCBlock(10, D), (2, 10), (2, D)),
])
def test_op_shapes(op, x_shape, out_shape):
    assert op(torch.randn(x_shape)).shape == out_shape


def test_op_layers_follow_the_table():
    conv, down, up, unflat = Conv(1, D)[0], DownConv(D, D)[0], UpConv(D, D)[0], Unflatten(D)[0]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert (down.kernel_size, down.stride, down.padding) == ((3, 3), (2, 2), (1, 1))
    assert isinstance(up, torch.nn.ConvTranspose2d) and (up.kernel_size, up.stride, up.padding) == ((4, 4), (2, 2), (1, 1))
    assert (unflat.kernel_size, unflat.stride, unflat.padding) == ((7, 7), (7, 7), (0, 0))
    assert isinstance(Flatten()[0], torch.nn.AvgPool2d) and Flatten()[0].kernel_size == 7


def test_unet_channel_plan():
    net = UnconditionalUNet(hidden=D)
    assert net.up1[0][0].in_channels == 4 * D and net.up2[0][0].in_channels == 2 * D
    assert net.conv_mid[0][0].in_channels == 2 * D and net.conv_out.out_channels == 1
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())


def test_unet_shapes_and_conditioning():
    x = torch.randn(3, 1, 28, 28)
    t = torch.rand(3)
    c = one_hot(torch.tensor([1, 5, 9]))
    assert UnconditionalUNet(hidden=D)(x).shape == x.shape
    tnet = TimeConditionalUNet(hidden=D).eval()
    assert tnet(x, t).shape == x.shape
    cnet = ClassConditionalUNet(hidden=D).eval()
    out = cnet(x, t, c)
    assert out.shape == x.shape
    # the condition must change the output; an unconditional (zero) c is a different input
    assert not torch.allclose(out, cnet(x, t, torch.zeros_like(c)))
    assert not torch.allclose(tnet(x, t), tnet(x, t + 0.5))


def test_fc_widths_match_injection_points():
    cnet = ClassConditionalUNet(hidden=D)
    assert [b[0].in_features for b in cnet.t_embed] == [1, 1]
    assert [b[-1].out_features for b in cnet.t_embed] == [2 * D, D]
    assert [b[0].in_features for b in cnet.c_embed] == [10, 10]
    assert [b[-1].out_features for b in cnet.c_embed] == [2 * D, D]


def test_wrong_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="28x28"):
        UnconditionalUNet(hidden=D)(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("nope")

"""The inference form of CARN (fp32 and reduced precision) computes the plain module's function."""
import pytest
import torch
from conftest import infer

from pcsr import api
from pcsr.models.backbones import CARN, CARNConfig
from pcsr.engines.fast_carn import (FastCARN, _AccumulatingCascade, _ChainedCascade, chained_fp32_works,
                                   fused_conv_works)
from pcsr.models.pcsr import PCSR, Routing
from pcsr.models.specs import ModelSpec


def _carn(scale, nf=16, groups=4, seed=0):
    torch.manual_seed(seed)
    net = CARN(CARNConfig(nf=nf, groups=groups), scale)
    for m in net.modules():  # batch norm with non-trivial statistics, so that folding it is tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.mark.parametrize("scale", [None, 4, 3])
def test_fp32_form_equals_plain_module(scale):
    net = _carn(scale)
    x = torch.rand(2, 3, 11, 17)
    with torch.inference_mode():
        ref = net(x)
        fast = FastCARN(net, torch.float32)(x)
    assert fast.shape == ref.shape
    assert (fast - ref).abs().max().item() < 1e-5


def test_bf16_form_is_close_and_finite():
    net = _carn(None, nf=20, groups=4, seed=1)   # odd column prefixes: 1 + k * 20
    x = torch.rand(1, 3, 23, 29)
    with torch.inference_mode():
        ref = net(x)
        fast = FastCARN(net, torch.bfloat16)(x).float()
    assert torch.isfinite(fast).all()
    rel = (fast - ref).norm() / ref.norm()
    assert rel.item() < 2e-2


@pytest.mark.filterwarnings("ignore:this CPU has no native bfloat16")
def test_model_uses_the_fast_form_and_leaves_the_net_alone():
    torch.manual_seed(0)
    net = PCSR(ModelSpec("carn", {"nf": 16, "groups": 4}, 4, ((8,), (16, 16)), (8,)))
    net.eval()
    fp32 = api.Model(net, device="cpu", precision="fp32")
    bf16 = api.Model(net, device="cpu", precision="bf16")
    # fp32: the chained form where oneDNN's fused convolutions run, else the plain module
    assert isinstance(fp32.engine.backbone, FastCARN if chained_fp32_works(torch.device("cpu")) else CARN)
    assert isinstance(bf16.engine.backbone, FastCARN)
    chained = fused_conv_works(torch.bfloat16)  # bf16: the chain where oneDNN's fused ops run (AVX512/AMX)
    assert isinstance(bf16.engine.backbone.cascade, _ChainedCascade if chained else _AccumulatingCascade)
    assert isinstance(net.backbone, CARN)
    lr = torch.rand(1, 3, 12, 15)
    with torch.inference_mode():
        plain = infer(net, lr, routing_=Routing(budget=1.0)).sr
    a = fp32.run(lr, Routing(budget=1.0)).sr
    b = bf16.run(lr, Routing(budget=1.0)).sr
    assert b.shape == a.shape == (1, 3, 48, 60)
    assert (a - plain).abs().max().item() < 1e-5
    assert (a - b).abs().mean().item() < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_cascade_forms_compute_the_fusions(dtype):
    """The chained (where oneDNN's fused convolutions run) and accumulating cascades both compute
    the plain fusions: the 1x1 convolution of the concatenation, batch norm, ReLU. In bf16 they
    round the same sums in the same order: bit-identical."""
    net = _carn(None, nf=8, groups=2, seed=3)
    block = net.blocks[0]
    x = [torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last) for _ in range(4)]
    kinds = [_AccumulatingCascade] + ([_ChainedCascade] if fused_conv_works(dtype) else [])
    tol = 1e-5 if dtype == torch.float32 else 0.05
    with torch.inference_mode():
        want = [f(torch.cat(x[:k + 2], 1)) for k, f in enumerate(block.fuse)]
        forms = [kind(block.fuse, 8, dtype) for kind in kinds]
        if len(forms) == 2 and forms[1].in_place:  # the chain without in-place accumulation too
            forms.append(_ChainedCascade(block.fuse, 8, dtype))
            forms[-1].in_place = False
        outs = []
        for form in forms:
            fusions = form.open(x[0].to(dtype))
            for k in range(3):
                fusions.push(x[k + 1].to(dtype))
                got = fusions.take(k).float()
                outs.append(got)
                assert got.shape == want[k].shape
                assert (got - want[k]).abs().max() <= tol * want[k].abs().max(), (form, k)
    if dtype == torch.bfloat16:
        assert all(torch.equal(o, outs[i % 3]) for i, o in enumerate(outs))

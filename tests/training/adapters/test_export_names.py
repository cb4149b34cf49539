"""ComfyUI and kohya exports of a Wan adapter use Wan's original module names by default: what
ComfyUI, musubi-tuner and diffusers' own Wan loader expect from those files."""

import pytest
import torch
from safetensors import safe_open

from training.adapters import load_adapter
from training.adapters.cli import convert_main
from training.adapters.formats import open_adapter
from training.adapters.load import loaded_adapters

from .conftest import forward

FIRST_KEY = {"comfyui": "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
             "kohya": "lora_unet_blocks_0_self_attn_q.lora_down.weight"}
DIFFUSERS_KEY = {"comfyui": "diffusion_model.blocks.0.attn1.to_q.lora_down.weight",
                 "kohya": "lora_unet_blocks_0_attn1_to_q.lora_down.weight"}


def keys(path):
    with safe_open(str(path), "pt") as f:
        return set(f.keys()), f.metadata()


@pytest.mark.parametrize("with_model", [True, False])
def test_default_export_loads_in_diffusers_and_back_identically(with_model, source, tiny_wan, new_wan, tmp_path,
                                                                capsys):
    from diffusers import WanPipeline
    pipe = WanPipeline.from_pretrained(str(tiny_wan))
    ref = open_adapter(source.diffusers)
    for to in ("comfyui", "kohya"):
        out = tmp_path / to / f"{to}.safetensors"
        argv = [str(source.diffusers), "--to", to, "--out", str(out)] + (["--model", str(tiny_wan)] if with_model
                                                                          else [])
        assert convert_main(argv) == 0  # no --original-names: the default
        printed = capsys.readouterr().out

        # diffusers' own Wan loading path accepts it (its converter maps the original names) ...
        pipe.load_lora_weights(str(out.parent), weight_name=out.name, adapter_name=to)
        assert loaded_adapters(pipe.transformer) == {to}
        assert torch.allclose(forward(pipe.transformer), source.output, atol=1e-5, rtol=0)
        pipe.delete_adapters(to)
        names, meta = keys(out)
        assert FIRST_KEY[to] in names and not any(".attn1." in k or "_attn1_" in k for k in names)
        assert meta["lorabench_module_names"].startswith("original wan naming")
        assert "module names: original wan naming" in printed and "e.g. `blocks.0.self_attn.k`" in printed

        # ... and lorabench's loader gives back the very same tensors and alphas.
        model = new_wan()
        rep = load_adapter(model, out)
        assert rep.ok and rep.dialect == to and len(rep.matched) == 20
        if to == "comfyui":
            assert any("mapped from original wan naming" in n for n in rep.notes)
        for name, mod in ref.lora().items():
            layer = model.get_submodule(name)
            assert torch.equal(layer.lora_A["lorabench"].weight, mod.A)
            assert torch.equal(layer.lora_B["lorabench"].weight, mod.B)
            assert rep.alphas[name] == mod.alpha
        assert torch.equal(forward(model), source.output)


def test_diffusers_names_on_request(source, tiny_wan, tmp_path, capsys):
    for to in ("comfyui", "kohya"):
        out = tmp_path / f"{to}.safetensors"
        assert convert_main([str(source.diffusers), "--to", to, "--out", str(out), "--diffusers-names"]) == 0
        assert "module names: diffusers naming" in capsys.readouterr().out
        names, _ = keys(out)
        assert DIFFUSERS_KEY[to] in names and FIRST_KEY[to] not in names
    # diffusers and peft targets keep diffusers names by default, even from an original-named file
    comfy = tmp_path / "orig.safetensors"
    assert convert_main([str(source.diffusers), "--to", "comfyui", "--out", str(comfy)]) == 0
    assert convert_main([str(comfy), "--to", "diffusers", "--out", str(tmp_path / "d")]) == 0
    names, _ = keys(tmp_path / "d" / "pytorch_lora_weights.safetensors")
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in names
    with pytest.raises(SystemExit):  # argparse: the two namings exclude each other
        convert_main([str(source.diffusers), "--to", "kohya", "--out", str(out), "--original-names",
                      "--diffusers-names"])

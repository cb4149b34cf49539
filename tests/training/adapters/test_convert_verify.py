"""convert round trips, proof of effect, and the CLI entry points."""

import json

import pytest
import torch
from safetensors import safe_open

from training.adapters import AdapterError, convert, load_adapter, verify_effect, weight_deltas
from training.adapters.cli import convert_main, inspect_main, verify_main
from training.adapters.convert import FORMATS
from training.models import get_spec

from .conftest import forward, lora_cfg, save_diffusers


@pytest.fixture(scope="module")
def reference_deltas(source):
    return weight_deltas(source.model, "default")


@pytest.fixture(scope="module")
def zero_b(new_wan, tmp_path_factory):
    """A freshly initialised adapter (B = 0), saved by diffusers: loads fine, does nothing."""
    tr = new_wan()
    tr.add_adapter(lora_cfg(), adapter_name="default")
    return save_diffusers(tr, tmp_path_factory.mktemp("zero"), lora_cfg())


@pytest.mark.parametrize("to", FORMATS)
def test_round_trip_keeps_every_delta(to, source, new_wan, reference_deltas, tmp_path):
    out = convert(source.diffusers, to, tmp_path / to)
    model = new_wan()
    rep = load_adapter(model, out)
    assert rep.ok and rep.dialect == to
    assert weight_deltas(model) == reference_deltas
    # and back again, from the converted file
    again = convert(out, "diffusers", tmp_path / "back", model=new_wan())  # kohya needs the model
    model = new_wan()
    load_adapter(model, again)
    assert weight_deltas(model) == reference_deltas


def test_alpha_written_exactly(source, tmp_path):
    for to, prefix, sep in (("kohya", "lora_unet_", "_"), ("comfyui", "diffusion_model.", ".")):
        # Wan's original names by default (ffn.0 = ffn.net.0.proj, self_attn.q = attn1.to_q)
        out = convert(source.diffusers, to, tmp_path / f"{to}.safetensors")
        with safe_open(str(out), "pt") as f:
            a = f.get_tensor(f"{prefix}blocks{sep}0{sep}ffn{sep}0.alpha")
            assert a.ndim == 0 and float(a) == 3.0
            assert float(f.get_tensor(f"{prefix}blocks{sep}0{sep}self_attn{sep}q.alpha")) == 8.0
        out = convert(source.diffusers, to, tmp_path / f"{to}-d.safetensors", original_names=False)
        with safe_open(str(out), "pt") as f:
            a = f.get_tensor(f"{prefix}blocks{sep}0{sep}ffn{sep}net{sep}0{sep}proj.alpha")
            assert a.ndim == 0 and float(a) == 3.0
            assert float(f.get_tensor(f"{prefix}blocks{sep}0{sep}attn1{sep}to_q.alpha")) == 8.0
    peft = convert(source.diffusers, "peft", tmp_path / "peft")
    cfg = json.loads((peft / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] == 8 and list(cfg["alpha_pattern"].values()) == [3.0]
    odd = convert.__globals__["alpha_tensor"](0.1)  # not a float32 value: kept in float64
    assert odd.dtype == torch.float64 and float(odd) == 0.1


def test_converted_files_load_in_the_reference_libraries(source, tiny_wan, new_wan, tmp_path):
    from diffusers import WanPipeline
    from peft import PeftModel
    pipe = WanPipeline.from_pretrained(str(tiny_wan))
    out = convert(source.peft, "diffusers", tmp_path / "d")
    pipe.load_lora_weights(str(out.parent), weight_name=out.name)
    assert torch.equal(forward(pipe.transformer), source.output)
    peft_dir = convert(source.diffusers, "peft", tmp_path / "p")
    assert torch.equal(forward(PeftModel.from_pretrained(new_wan(), str(peft_dir))), source.output)


def test_kohya_source_needs_the_model(source, new_wan, tmp_path):
    k = convert(source.diffusers, "kohya", tmp_path / "k.safetensors")
    with pytest.raises(AdapterError, match="pass model="):
        convert(k, "peft", tmp_path / "p")
    assert (convert(k, "peft", tmp_path / "p", model=new_wan()) / "adapter_config.json").is_file()
    with pytest.raises(AdapterError, match="unknown adapter format 'onnx'"):
        convert(k, "onnx", tmp_path / "x")


def test_zero_b_has_no_effect(zero_b, new_wan):
    model = new_wan()
    rep = load_adapter(model, zero_b)
    assert rep.ok and set(rep.delta_norms.values()) == {0.0}
    with pytest.raises(AdapterError, match="adapter has no effect: every B matrix is zero"):
        weight_deltas(model)
    with pytest.raises(AdapterError, match="adapter has no effect: every B matrix is zero"):
        verify_effect(model, get_spec("wan"), rep)


def test_verify_effect_wan_and_sd3(source, new_wan, tiny_sd3, tmp_path):
    model = new_wan()
    rep = load_adapter(model, source.diffusers)
    diff = verify_effect(model, get_spec("wan"), rep)
    assert diff > 1e-3 and rep.effect_max_diff == diff and "effect" in rep.to_table()
    assert weight_deltas(model) == pytest.approx(rep.delta_norms, rel=1e-5)
    with pytest.raises(AdapterError, match="no effect on the output"):
        verify_effect(model, "wan", rep, atol=1e9)
    assert torch.equal(forward(model), source.output)  # the on/off switch is restored

    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig, get_peft_model_state_dict
    sd3 = SD3Transformer2DModel.from_pretrained(str(tiny_sd3 / "transformer"))
    sd3.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=get_spec("sd3").default_lora_targets))
    with torch.no_grad():
        for n, p in sd3.named_parameters():
            if "lora_B" in n:
                p.fill_(0.05)
    StableDiffusion3Pipeline.save_lora_weights(str(tmp_path / "sd3"),
                                               transformer_lora_layers=get_peft_model_state_dict(sd3))
    fresh = SD3Transformer2DModel.from_pretrained(str(tiny_sd3 / "transformer"))
    rep = load_adapter(fresh, tmp_path / "sd3" / "pytorch_lora_weights.safetensors")
    assert rep.ok and any("alpha = rank assumed" in n for n in rep.notes)  # no metadata was saved
    assert verify_effect(fresh, get_spec("sd3"), rep) > 0


def test_cli(source, zero_b, tiny_wan, new_wan, tmp_path, capsys):
    assert inspect_main([str(source.peft)]) == 0
    out = capsys.readouterr().out
    assert "dialect  peft" in out and "inspected alone" in out and "blocks.1.attn1.to_q" in out
    assert inspect_main([str(source.diffusers), "--model", str(tiny_wan)]) == 0
    assert "20 matched, 0 missing, 0 unexpected" in capsys.readouterr().out
    assert verify_main([str(source.diffusers), "--model", str(tiny_wan), "--scale", "0.5"]) == 0
    assert "OK: the adapter changes the output" in capsys.readouterr().out
    assert verify_main([str(zero_b), "--model", str(tiny_wan)]) == 2  # EXIT_USER_ERROR
    assert "every B matrix is zero" in capsys.readouterr().err
    k = tmp_path / "k.safetensors"
    assert convert_main([str(source.diffusers), "--to", "kohya", "--out", str(k)]) == 0 and k.is_file()
    assert capsys.readouterr().out.startswith("wrote")
    assert inspect_main([str(k), "--model", str(tiny_wan), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dialect"] == "kohya" and len(data["matched"]) == 20 and data["alphas"]["blocks.0.ffn.net.0.proj"] == 3

    big = new_wan(layers=3)
    big.add_adapter(lora_cfg(), adapter_name="default")
    with torch.no_grad():
        for n, p in big.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    f = save_diffusers(big, tmp_path / "big", lora_cfg())
    assert inspect_main([str(f), "--model", str(tiny_wan)]) == 2
    assert "does not fully match WanTransformer3DModel: 0 missing, 10 unexpected" in capsys.readouterr().err
    assert inspect_main([str(f), "--model", str(tiny_wan), "--allow-partial"]) == 0
    capsys.readouterr()
    assert verify_main([str(f), "--model", str(tiny_wan)]) == 2
    assert "the adapter has 3 blocks, the model 2" in capsys.readouterr().err
    assert inspect_main([str(tmp_path / "missing.safetensors")]) == 2
    assert inspect_main([str(source.peft), "--model", str(tmp_path)]) == 2  # not a model folder

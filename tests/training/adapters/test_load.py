"""load_adapter: every dialect gives the trained model back exactly, or an explained error."""

import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from training.adapters import AdapterError, convert, load_adapter
from training.adapters.load import loaded_adapters

from .conftest import forward, lora_cfg, randomise, save_diffusers

N_MODULES = 2 * 10  # 2 blocks x (4 self-attn + 4 cross-attn + 2 ffn)


def assert_complete(rep, n=N_MODULES):
    assert rep.loaded and len(rep.matched) == n and not rep.missing and not rep.unexpected, rep.to_table()


@pytest.mark.parametrize("which", ["peft", "diffusers", "kohya", "comfyui"])
def test_every_dialect_reproduces_the_trained_model(which, source, new_wan, tmp_path):
    path = {"peft": source.peft, "diffusers": source.diffusers}.get(which)
    if path is None:  # kohya / ComfyUI files made by our converter from the diffusers file
        path = convert(source.diffusers, which, tmp_path / f"{which}.safetensors")
    model = new_wan()
    rep = load_adapter(model, path)
    assert_complete(rep)
    assert rep.dialect == which
    assert rep.ranks["blocks.1.attn1.to_q"] == 2 and rep.alphas["blocks.0.ffn.net.0.proj"] == 3.0
    assert torch.equal(forward(model), source.output)


def test_trainer_checkpoint_folder_and_its_diffusers_file(trained, new_wan, tmp_path):
    for path in (trained.checkpoint, trained.checkpoint / "pytorch_lora_weights.safetensors"):
        model = new_wan()
        rep = load_adapter(model, path)
        assert_complete(rep)  # tiny-wan.yaml targets the same 10 modules per block
        assert torch.allclose(forward(model), trained.output, atol=1e-6, rtol=0)
        assert any("transformer config matches the one it was trained on" in n for n in rep.notes)
    assert rep.dialect == "diffusers" and set(rep.ranks.values()) == {8}
    # Loaded into another architecture (from a folder, so its config is known): said loudly.
    from diffusers import WanTransformer3DModel
    new_wan(layers=3).save_pretrained(str(tmp_path / "deeper"))
    rep = load_adapter(WanTransformer3DModel.from_pretrained(str(tmp_path / "deeper")), trained.checkpoint,
                       allow_partial=True)
    assert len(rep.missing) == 10 and any(n.startswith("WARNING: transformer config differs") for n in rep.notes)


def test_same_model_as_diffusers_load_lora_weights(source, tiny_wan, new_wan):
    """Our injection == diffusers' for a diffusers-layout file: same parameters, same output, same scale."""
    from diffusers import WanPipeline
    pipe = WanPipeline.from_pretrained(str(tiny_wan))
    base = forward(pipe.transformer)
    # The library behaviour we exist for: a PEFT-layout file loads *nothing* into diffusers (a warning only).
    pipe.load_lora_weights(str(source.peft), weight_name="adapter_model.safetensors", adapter_name="peft_try")
    assert loaded_adapters(pipe.transformer) == set()
    assert torch.equal(forward(pipe.transformer), base)
    ours_peft = new_wan()
    assert_complete(load_adapter(ours_peft, source.peft))
    assert torch.equal(forward(ours_peft), source.output)

    pipe.load_lora_weights(str(source.diffusers.parent), adapter_name="lorabench")
    ours = new_wan()
    load_adapter(ours, source.diffusers)
    theirs = pipe.transformer.state_dict()
    mine = ours.state_dict()
    assert sorted(theirs) == sorted(mine)
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs)
    assert torch.equal(forward(pipe.transformer), forward(ours))

    pipe.set_adapters(["lorabench"], adapter_weights=[0.5])
    half = new_wan()
    rep = load_adapter(half, source.diffusers, scale=0.5)
    assert rep.scaling("blocks.0.attn1.to_q") == 0.5 * 8 / 4
    assert torch.equal(forward(pipe.transformer), forward(half))
    assert not torch.equal(forward(half), source.output)


def test_diffsynth_and_comfyui_with_original_wan_names(source, new_wan, tmp_path):
    # Official-Wan module names, written here by hand (independent of the package's table).
    orig = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
            "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
            "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "ffn.net.0.proj": "ffn.0",
            "ffn.net.2": "ffn.2"}
    ref = load_adapter(new_wan(), source.diffusers)
    sd = load_file(str(source.diffusers))
    raw = {}
    for key, t in sd.items():
        m = re.match(r"transformer\.blocks\.(\d+)\.(.+)\.lora_(A|B)\.weight", key)
        mod = f"blocks.{m[1]}.{m[2]}"
        if m[3] == "B":  # DiffSynth stores no alpha (alpha = rank): fold alpha/r into B
            t = t * (ref.alphas[mod] / ref.ranks[mod])
        raw[f"blocks.{m[1]}.{orig[m[2]]}.lora_{m[3]}.default.weight"] = t
    save_file(raw, str(tmp_path / "diffsynth.safetensors"))
    model = new_wan()
    rep = load_adapter(model, tmp_path / "diffsynth.safetensors")
    assert_complete(rep)
    assert rep.dialect == "diffsynth" and any("original wan naming" in n for n in rep.notes)
    assert torch.allclose(forward(model), source.output, atol=1e-6, rtol=0)

    comfy = convert(source.diffusers, "comfyui", tmp_path / "c.safetensors", model=new_wan(), original_names=True)
    with safe_open(str(comfy), "pt") as f:
        assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in f.keys()
        assert float(f.get_tensor("diffusion_model.blocks.0.ffn.0.alpha")) == 3.0
    model = new_wan()
    assert_complete(load_adapter(model, comfy))
    assert torch.equal(forward(model), source.output)


def test_adapter_with_more_blocks_than_the_model(new_wan, tmp_path):
    big = new_wan(layers=3)
    big.add_adapter(lora_cfg(), adapter_name="default")
    randomise(big, seed=2)
    f = save_diffusers(big, tmp_path / "big", lora_cfg())
    model = new_wan()
    with pytest.raises(AdapterError) as e:
        load_adapter(model, f)
    msg = str(e.value)
    assert "module `blocks.2.attn1.to_q` does not exist: the adapter has 3 blocks, the model 2" in msg
    assert "10 unexpected" in msg and "allow_partial=True" in msg
    assert loaded_adapters(model) == set()  # nothing half-loaded
    rep = load_adapter(model, f, allow_partial=True)
    assert len(rep.matched) == N_MODULES and len(rep.unexpected) == 10 and rep.loaded
    assert all(i.name.startswith("blocks.2.") for i in rep.unexpected)
    assert any("partial load" in n for n in rep.notes)
    assert not torch.equal(forward(model), forward(new_wan()))

    # The other way round: the config targets modules of block 2, which the file lacks.
    small_src = new_wan()
    small_src.add_adapter(lora_cfg(), adapter_name="default")
    randomise(small_src, seed=3)
    f2 = save_diffusers(small_src, tmp_path / "small", lora_cfg())
    with pytest.raises(AdapterError, match="10 missing") as e:
        load_adapter(new_wan(layers=3), f2)
    assert re.search(r"blocks\.2\.attn1\.to_q\s+missing.*targeted by `to_q`.*the adapter has 2 blocks, the model 3",
                     str(e.value))


def test_rank_and_shape_mismatch_name_module_and_shapes(source, new_wan, tmp_path):
    sd = load_file(str(source.diffusers))
    with safe_open(str(source.diffusers), "pt") as f:
        meta = f.metadata()
    bad = dict(sd, **{"transformer.blocks.0.attn1.to_q.lora_B.weight": torch.randn(32, 8)})
    save_file(bad, str(tmp_path / "rank.safetensors"), metadata=meta)
    with pytest.raises(AdapterError, match=r"blocks\.0\.attn1\.to_q .*rank mismatch: A is 4x32 but B is 32x8"):
        load_adapter(new_wan(), tmp_path / "rank.safetensors")
    bad = dict(sd, **{"transformer.blocks.0.attn2.to_k.lora_A.weight": torch.randn(4, 48)})
    save_file(bad, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(AdapterError, match=r"blocks\.0\.attn2\.to_k .*shape mismatch with model "
                                           r"Linear\(in=32,out=32\): A is 4x48, B is 32x4"):
        load_adapter(new_wan(), tmp_path / "shape.safetensors")


def test_missing_module_from_the_config(source, new_wan, tmp_path):
    folder = tmp_path / "peft"
    shutil.copytree(source.peft, folder)
    sd = load_file(str(folder / "adapter_model.safetensors"))
    sd = {k: v for k, v in sd.items() if ".blocks.1.ffn.net.2." not in k}
    save_file(sd, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"blocks\.1\.ffn\.net\.2\s+missing\s.*targeted by `ffn\.net\.2` in "
                                           r".*adapter_config\.json, but the file has no weights for it"):
        load_adapter(new_wan(), folder)


def test_modules_to_save_tensors_are_loaded_not_dropped(new_wan, tmp_path):
    from peft import get_peft_model
    pm = get_peft_model(new_wan(), lora_cfg(modules_to_save=["proj_out"]))
    randomise(pm, seed=4)
    with torch.no_grad():
        pm.base_model.model.proj_out.modules_to_save["default"].weight.mul_(1.5)
    pm.save_pretrained(str(tmp_path / "mts"))
    expected = forward(pm)
    model = new_wan()
    rep = load_adapter(model, tmp_path / "mts")
    assert rep.full_tensors == ["proj_out"] and rep.ok
    assert "proj_out" in rep.to_table() and "modules_to_save" in rep.to_table()
    assert torch.equal(forward(model), expected)
    with pytest.raises(AdapterError, match="cannot express"):
        convert(tmp_path / "mts", "kohya", tmp_path / "k.safetensors")


def test_foreign_keys_and_nothing_matching(source, new_wan, tmp_path):
    sd = load_file(str(source.diffusers))
    te = dict(sd, **{"text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": torch.zeros(4, 32)})
    save_file(te, str(tmp_path / "te.safetensors"))
    with pytest.raises(AdapterError, match="text-encoder LoRA: only the transformer/UNet is patched"):
        load_adapter(new_wan(), tmp_path / "te.safetensors")
    with pytest.raises(AdapterError, match="no LoRA tensor of this diffusers adapter matches"):
        load_adapter(torch.nn.Sequential(torch.nn.Linear(4, 4)), source.diffusers)


def test_same_name_twice_is_refused(source, new_wan):
    model = new_wan()
    load_adapter(model, source.diffusers)
    with pytest.raises(AdapterError, match="already loaded"):
        load_adapter(model, source.peft)
    rep = load_adapter(model, source.peft, adapter_name="second")
    assert rep.ok and loaded_adapters(model) == {"lorabench", "second"}


def test_loader_leaves_the_global_rng_alone(source, new_wan):
    model = new_wan()
    state = torch.random.get_rng_state()
    load_adapter(model, source.diffusers)
    assert torch.equal(torch.random.get_rng_state(), state)

"""Key dialects, name tables and reading files: the normalisation layer, without injecting."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from training.adapters import AdapterError, inspect_adapter
from training.adapters.formats import open_adapter, parse_key, read_adapter
from training.adapters.names import NAME_TABLES, describe_model


@pytest.mark.parametrize("key, dialect, name, kind", [
    ("base_model.model.blocks.0.attn1.to_q.lora_A.weight", "peft", "blocks.0.attn1.to_q", "A"),
    ("base_model.model.blocks.0.attn1.to_q.lora_B.default.weight", "peft", "blocks.0.attn1.to_q", "B"),
    ("base_model.model.proj_out.weight", "peft", "proj_out", "full"),
    ("base_model.model.proj_out.modules_to_save.default.bias", "peft", "proj_out", "full"),
    ("transformer.blocks.0.attn1.to_q.lora_A.weight", "diffusers", "blocks.0.attn1.to_q", "A"),
    ("unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", "diffusers", "down_blocks.0.attentions.0.proj_in", "B"),
    ("lora_unet_blocks_0_attn1_to_q.lora_down.weight", "kohya", "blocks_0_attn1_to_q", "A"),
    ("lora_unet_blocks_0_attn1_to_q.lora_up.weight", "kohya", "blocks_0_attn1_to_q", "B"),
    ("lora_unet_blocks_0_attn1_to_q.alpha", "kohya", "blocks_0_attn1_to_q", "alpha"),
    ("diffusion_model.blocks.0.self_attn.q.lora_down.weight", "comfyui", "blocks.0.self_attn.q", "A"),
    ("diffusion_model.blocks.0.self_attn.q.lora_B.weight", "comfyui", "blocks.0.self_attn.q", "B"),
    ("diffusion_model.blocks.0.self_attn.q.alpha", "comfyui", "blocks.0.self_attn.q", "alpha"),
    ("blocks.0.self_attn.q.lora_A.default.weight", "diffsynth", "blocks.0.self_attn.q", "A"),
    ("blocks.0.attn1.to_q.lora_B.weight", "diffsynth", "blocks.0.attn1.to_q", "B"),
])
def test_parse_key(key, dialect, name, kind):
    p = parse_key(key)
    assert (p.dialect, p.name, p.kind) == (dialect, name, kind)


@pytest.mark.parametrize("key, why", [
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", "text-encoder"),
    ("text_encoder.text_model.encoder.layers.0.q_proj.lora_A.weight", "text-encoder"),
    ("base_model.model.blocks.0.attn1.to_q.lora_magnitude_vector", "DoRA"),
    ("diffusion_model.blocks.0.self_attn.q.diff_b", "not supported"),
    ("lora_unet_blocks_0_attn1_to_q.hada_w1_a", "not supported"),
])
def test_unsupported_keys_are_explained(key, why):
    p = parse_key(key)
    assert p.kind == "skip" and why in p.reason


def test_wan_name_table_both_ways():
    t = NAME_TABLES["wan"]
    pairs = {"blocks.3.self_attn.q": "blocks.3.attn1.to_q", "blocks.3.self_attn.o": "blocks.3.attn1.to_out.0",
             "blocks.12.cross_attn.k": "blocks.12.attn2.to_k", "blocks.0.ffn.0": "blocks.0.ffn.net.0.proj",
             "blocks.0.ffn.2": "blocks.0.ffn.net.2", "head.head": "proj_out",
             "blocks.1.cross_attn.k_img": "blocks.1.attn2.add_k_proj"}
    for orig, diff in pairs.items():
        assert t.to_model(orig) == diff and t.to_original(diff) == orig
    assert t.to_model("blocks.0.norm3") is None


def test_every_source_is_read_with_its_alphas(source):
    for path, dialect, alpha_from in ((source.peft, "peft", "adapter_config.json"),
                                      (source.diffusers, "diffusers", "metadata")):
        a = open_adapter(path)
        assert a.dialect == dialect and not a.issues
        assert len(a.lora()) == 2 * 10
        assert a.modules["blocks.1.attn1.to_q"].rank == 2
        assert a.modules["blocks.0.ffn.net.0.proj"].alpha == 3.0
        assert a.modules["blocks.0.attn1.to_k"].alpha == 8.0
        assert alpha_from in a.modules["blocks.0.attn1.to_k"].alpha_source


def test_kohya_names_resolve_against_the_model_only(source, new_wan, tmp_path):
    sd = load_file(str(source.diffusers))
    kohya = {}
    for k, v in sd.items():
        mod, kind = k[len("transformer."):].split(".lora_")
        flat = "lora_unet_" + mod.replace(".", "_")
        kohya[f"{flat}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = v
        kohya[f"{flat}.alpha"] = torch.tensor(8.0)
    f = tmp_path / "k.safetensors"
    save_file(kohya, str(f))
    alone = open_adapter(f)
    assert alone.dialect == "kohya" and "blocks_0_attn1_to_q" in alone.modules
    assert any("resolved only against a model" in n for n in alone.notes)
    resolved = open_adapter(f, describe_model(new_wan()))
    assert sorted(resolved.modules) == sorted(open_adapter(source.diffusers).modules)


def test_no_alpha_anywhere_is_said(source, tmp_path):
    sd = load_file(str(source.diffusers))
    f = tmp_path / "bare.safetensors"
    save_file({k[len("transformer."):]: v for k, v in sd.items()}, str(f))  # diffsynth-like, no metadata
    rep = inspect_adapter(f)
    assert rep.dialect == "diffsynth" and rep.alphas["blocks.0.attn1.to_q"] == 4.0
    assert any("alpha = rank assumed" in n for n in rep.notes) and "alpha = rank assumed" in rep.to_table()


def test_corrupt_safetensors_names_the_file(source, tmp_path):
    f = tmp_path / "truncated.safetensors"
    data = source.diffusers.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="truncated.safetensors.*corrupt or truncated"):
        read_adapter(f)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(AdapterError, match="junk.safetensors"):
        read_adapter(tmp_path / "junk.safetensors")
    with pytest.raises(AdapterError, match="adapter not found"):
        read_adapter(tmp_path / "nothing")


def test_bin_is_read_without_pickle(source, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    sd = load_file(str(source.peft / "adapter_model.safetensors"))
    torch.save(sd, folder / "adapter_model.bin")
    (folder / "adapter_config.json").write_text((source.peft / "adapter_config.json").read_text())
    a = open_adapter(folder)
    assert a.dialect == "peft" and a.modules["blocks.0.ffn.net.0.proj"].alpha == 3.0
    torch.save({"x": object()}, tmp_path / "evil.bin")
    with pytest.raises(AdapterError, match="evil.bin: cannot be read"):
        read_adapter(tmp_path / "evil.bin")


def test_several_named_adapters_in_one_file(tmp_path):
    f = tmp_path / "two.safetensors"
    save_file({"blocks.0.attn1.to_q.lora_A.default.weight": torch.zeros(2, 4),
               "blocks.0.attn1.to_q.lora_A.other.weight": torch.zeros(2, 4)}, str(f))
    with pytest.raises(AdapterError, match="several named adapters \\(default, other\\)"):
        open_adapter(f)


def test_checkpoint_file_changed_after_save(trained, tmp_path):
    import shutil
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained.checkpoint, ckpt)
    cfg = json.loads((ckpt / "adapter_config.json").read_text())
    sd = load_file(str(ckpt / "adapter_model.safetensors"))
    sd[next(iter(sd))] += 1
    save_file(sd, str(ckpt / "adapter_model.safetensors"))
    assert cfg["r"] == 8
    with pytest.raises(AdapterError, match="does not match the sha256 recorded in .*manifest.json"):
        read_adapter(ckpt)

"""A LoRA config that disagrees with its tensors (rank, alpha, target_modules) is refused with one line
per problem naming the file and the field, unless the caller explicitly accepts it."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from training.adapters import AdapterError, convert, inspect_adapter, load_adapter
from training.adapters.cli import convert_main, inspect_main, verify_main
from training.adapters.load import loaded_adapters

from .conftest import TARGETS, forward, randomise


@pytest.fixture(scope="module")
def rank8(new_wan, tmp_path_factory):
    """A PEFT folder (PeftModel.save_pretrained) with r=8, lora_alpha=8 on every target."""
    from peft import LoraConfig, get_peft_model
    pm = get_peft_model(new_wan(), LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS))
    randomise(pm, seed=6)
    out = tmp_path_factory.mktemp("rank8") / "peft"
    pm.save_pretrained(str(out))
    return out


def edited(folder, tmp_path, name="edited", **changes):
    """A copy of a PEFT folder whose adapter_config.json has ``changes`` applied."""
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_config_rank_and_alpha_over_other_rank_tensors(rank8, new_wan, tmp_path, capsys):
    bad = edited(rank8, tmp_path, r=16, lora_alpha=64)  # tensors are rank 8
    cfg = bad / "adapter_config.json"
    model = new_wan()
    with pytest.raises(AdapterError) as e:
        load_adapter(model, bad)
    lines = str(e.value).splitlines()
    assert lines[0].startswith(f"{bad / 'adapter_model.safetensors'}: its LoRA config disagrees with its tensors "
                               "(1 problem(s) below); nothing was loaded.")
    assert "allow_inconsistent=True (CLI: --allow-inconsistent)" in lines[0]
    assert lines[1:] == [f"  {cfg}: `r` = 16 but the tensors of 20 module(s) (first: `blocks.0.attn1.to_k`) "
                         "have rank 8"]
    assert loaded_adapters(model) == set()

    # Explicitly accepted: the tensors as they are, scale alpha / their own rank (64/8), never 64/16.
    rep = load_adapter(model, bad, allow_inconsistent=True)
    assert rep.loaded and {rep.scaling(m) for m in rep.matched} == {8.0}
    assert {model.get_submodule(m).scaling["lorabench"] for m in rep.matched} == {8.0}
    assert any("allow_inconsistent=True" in n for n in rep.notes)

    assert inspect_main([str(bad)]) == 2  # inspected alone: the disagreement needs no model
    cap = capsys.readouterr()
    assert f"inconsistent  {cfg}: `r` = 16" in cap.out and "FAIL: " in cap.err and "`r` = 16" in cap.err
    assert inspect_main([str(bad), "--allow-inconsistent"]) == 0
    capsys.readouterr()
    with pytest.raises(AdapterError, match="cannot convert: its LoRA config disagrees"):
        convert(bad, "comfyui", tmp_path / "c.safetensors")
    assert convert_main([str(bad), "--to", "diffusers", "--out", str(tmp_path / "d")]) == 2
    assert "`r` = 16" in capsys.readouterr().err


def test_verify_refuses_the_inconsistent_folder(rank8, tiny_wan, tmp_path, capsys):
    bad = edited(rank8, tmp_path, r=16, lora_alpha=64)
    assert verify_main([str(bad), "--model", str(tiny_wan)]) == 2
    assert "`r` = 16 but the tensors of 20 module(s)" in capsys.readouterr().err
    assert verify_main([str(bad), "--model", str(tiny_wan), "--allow-inconsistent"]) == 0


def test_rank_and_alpha_patterns_are_honoured_and_checked(source, new_wan, tmp_path):
    # The source's config has rank_pattern {blocks.1.attn1.to_q: 2} and alpha_pattern {blocks.0.ffn.net.0.proj: 3}.
    rep = inspect_adapter(source.peft, new_wan())
    assert rep.ok and rep.ranks["blocks.1.attn1.to_q"] == 2 and rep.alphas["blocks.0.ffn.net.0.proj"] == 3.0
    assert rep.scaling("blocks.1.attn1.to_q") == 8 / 2 and rep.scaling("blocks.0.ffn.net.0.proj") == 3 / 4
    bad = edited(source.peft, tmp_path, rank_pattern={"blocks.1.attn1.to_q": 3})
    rep = inspect_adapter(bad, new_wan())
    assert rep.inconsistent == [f"{bad / 'adapter_config.json'}: `rank_pattern['blocks.1.attn1.to_q']` = 3 but the "
                                "tensors of 1 module(s) (first: `blocks.1.attn1.to_q`) have rank 2"]
    assert not rep.ok


def test_alpha_tensors_against_the_config(source, new_wan, tmp_path):
    """A diffusers file whose metadata says lora_alpha=8 but whose `.alpha` tensor says 4."""
    sd = load_file(str(source.diffusers))
    with safe_open(str(source.diffusers), "pt") as f:
        meta = f.metadata()
    sd["transformer.blocks.0.attn1.to_q.alpha"] = torch.tensor(4.0)
    f = tmp_path / "alpha.safetensors"
    save_file(sd, str(f), metadata=meta)
    with pytest.raises(AdapterError) as e:
        load_adapter(new_wan(), f)
    assert str(e.value).splitlines()[1] == (
        "  alpha.safetensors metadata 'lora_adapter_metadata': `lora_alpha` = 8 but the `.alpha` tensors in "
        "alpha.safetensors give 4 for 1 module(s) (first: `blocks.0.attn1.to_q`)")


def test_target_modules_against_the_tensors(rank8, new_wan, tmp_path):
    cfg_targets = [t for t in TARGETS if t != "ffn.net.2"]
    # 1. tensors for modules the config does not target
    bad = edited(rank8, tmp_path, "untargeted", target_modules=cfg_targets)
    with pytest.raises(AdapterError) as e:
        load_adapter(new_wan(), bad)
    assert str(e.value).splitlines()[1] == (
        f"  {bad / 'adapter_config.json'}: `target_modules` does not select 2 module(s) that have tensors in "
        "adapter_model.safetensors (first: `blocks.0.ffn.net.2`)")

    # 2. a target entry the tensors do not answer at all: one line, not one "missing" row per module
    folder = edited(rank8, tmp_path, "no-to-k")
    sd = load_file(str(folder / "adapter_model.safetensors"))
    save_file({k: v for k, v in sd.items() if ".to_k." not in k}, str(folder / "adapter_model.safetensors"))
    rep = inspect_adapter(folder, new_wan())
    assert rep.inconsistent == [
        f"{folder / 'adapter_config.json'}: `target_modules` entry `to_k` selects 4 module(s) of WanTransformer3DModel "
        "(first: `blocks.0.attn1.to_k`) but adapter_model.safetensors has no tensors for any of them"]
    assert rep.missing == [] and rep.coverage == []
    model = new_wan()
    assert load_adapter(model, folder, allow_inconsistent=True).loaded

    # 3. an entry naming no module of this model (an i2v projection on a t2v model) is what peft ignores too
    extra = edited(rank8, tmp_path, "i2v-entry", target_modules=TARGETS + ["add_k_proj"])
    model = new_wan()
    rep = load_adapter(model, extra)
    assert rep.ok and any("entry `add_k_proj` names no module of WanTransformer3DModel" in n for n in rep.notes)
    assert not torch.equal(forward(model), forward(new_wan()))

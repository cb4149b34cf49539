"""Unusable files are refused at read time, by name: non-finite tensors, invalid JSON."""

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from training.adapters import AdapterError, inspect_adapter, load_adapter
from training.adapters.cli import inspect_main, verify_main
from training.adapters.load import loaded_adapters

B_KEY = "transformer.blocks.0.attn1.to_q.lora_B.weight"  # 32x4 in the tiny Wan


@pytest.fixture(scope="module")
def poisoned(source, tmp_path_factory):
    """The source diffusers file with one NaN in a lora_B (metadata kept), and one with two infs in a lora_A."""
    root = tmp_path_factory.mktemp("poisoned")
    with safe_open(str(source.diffusers), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(source.diffusers))
    nan = dict(sd)
    nan[B_KEY] = sd[B_KEY].clone()
    nan[B_KEY][3, 1] = float("nan")
    save_file(nan, str(root / "nan.safetensors"), metadata=meta)
    inf = dict(sd)
    a_key = "transformer.blocks.1.ffn.net.2.lora_A.weight"
    inf[a_key] = sd[a_key].clone()
    inf[a_key][0, :2] = torch.tensor([float("inf"), float("-inf")])
    save_file(inf, str(root / "inf.safetensors"), metadata=meta)
    return root


def test_nan_is_refused_by_key_in_load_inspect_and_verify(poisoned, new_wan, tiny_wan, capsys):
    f = poisoned / "nan.safetensors"
    expect = f"`{B_KEY}`: 1 NaN and 0 inf of 128 values"
    model = new_wan()
    with pytest.raises(AdapterError) as e:
        load_adapter(model, f)
    assert str(e.value).startswith(f"{f}: 1 tensor(s) hold non-finite values (NaN/inf)")
    assert str(e.value).splitlines()[1] == f"  {expect}"
    assert loaded_adapters(model) == set()
    with pytest.raises(AdapterError, match=re.escape(expect)):
        inspect_adapter(f)  # alone, too: the file is unusable whatever the model
    assert inspect_main([str(f)]) == 2
    assert expect in capsys.readouterr().err
    assert inspect_main([str(f), "--model", str(tiny_wan)]) == 2
    assert expect in capsys.readouterr().err
    assert verify_main([str(f), "--model", str(tiny_wan), "--allow-partial", "--allow-inconsistent"]) == 2
    err = capsys.readouterr().err
    assert expect in err and "loader bug" not in err


def test_inf_is_refused_by_key(poisoned, new_wan):
    with pytest.raises(AdapterError, match=re.escape(
            "`transformer.blocks.1.ffn.net.2.lora_A.weight`: 0 NaN and 2 inf of 256 values")):
        load_adapter(new_wan(), poisoned / "inf.safetensors")


def test_generate_refuses_the_nan_adapter(poisoned, tiny_wan, tmp_path):
    from training.generate import generate
    with pytest.raises(AdapterError, match=re.escape(f"`{B_KEY}`: 1 NaN")):
        generate(tiny_wan, ["a red circle"], tmp_path / "s", adapter=poisoned / "nan.safetensors", width=32,
                 height=32, frames=9, steps=1, guidance=1.0, max_text_length=32, progress=False)
    assert not list((tmp_path / "s").glob("*.mp4"))


def test_invalid_adapter_config_json_is_one_line(source, new_wan, tmp_path, capsys):
    folder = tmp_path / "peft"
    shutil.copytree(source.peft, folder)
    cfg = folder / "adapter_config.json"
    cfg.write_text('{\n  "r": 4,\n  "lora_alpha": 8,,\n}')
    with pytest.raises(AdapterError) as e:
        load_adapter(new_wan(), folder)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{cfg} is not valid JSON (Expecting property name enclosed in double quotes at line 3 "
                          "column 19, character 30); fix the file, or re-save the adapter")
    assert inspect_main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cfg} is not valid JSON") and "Traceback" not in err

    cfg.write_text(json.dumps(["r", 4]))
    with pytest.raises(AdapterError, match=re.escape(f"{cfg} holds a JSON list, not an object")):
        inspect_adapter(folder)
    cfg.write_text(json.dumps({"r": "four", "lora_alpha": 8, "target_modules": ["to_q"]}))
    with pytest.raises(AdapterError, match=re.escape(f"{cfg}: `r` is 'four', not a positive integer")):
        inspect_adapter(folder)


def test_invalid_metadata_and_manifest_json(source, tmp_path):
    sd = load_file(str(source.diffusers))
    f = tmp_path / "meta.safetensors"
    save_file(sd, str(f), metadata={"lora_adapter_metadata": '{"transformer.r": 4'})
    with pytest.raises(AdapterError, match=re.escape(
            f"{f}: metadata 'lora_adapter_metadata' is not valid JSON (Expecting ',' delimiter at line 1 column 20")):
        inspect_adapter(f)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(source.diffusers, ckpt / "pytorch_lora_weights.safetensors")
    (ckpt / "manifest.json").write_text("{")
    with pytest.raises(AdapterError, match=re.escape(f"{ckpt / 'manifest.json'} is not valid JSON (Expecting "
                                                     "property name enclosed in double quotes at line 1 column 2")):
        inspect_adapter(ckpt)


def test_checkpoint_config_edited_after_save(trained, tmp_path):
    """A lorabench checkpoint's adapter_config.json is covered by its manifest like the tensors."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained.checkpoint, ckpt)
    cfg = json.loads((ckpt / "adapter_config.json").read_text())
    (ckpt / "adapter_config.json").write_text(json.dumps(dict(cfg, lora_alpha=64)))
    with pytest.raises(AdapterError, match=re.escape(f"{ckpt / 'adapter_config.json'} does not match the sha256 "
                                                     f"recorded in {ckpt / 'manifest.json'}")):
        inspect_adapter(ckpt)

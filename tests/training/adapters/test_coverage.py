"""Coverage: an adapter adapting a module type in some blocks but not in others is partial and refused
unless the caller opts in; one adapting some module types in every block is complete."""

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from training.adapters import AdapterError, inspect_adapter, load_adapter
from training.adapters.cli import inspect_main, verify_main
from training.adapters.load import loaded_adapters

from .conftest import TARGETS, forward, randomise

MODULE_TYPES = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"]


@pytest.fixture(scope="module")
def block0(source, tmp_path_factory):
    """Raw diffusers and kohya files (no LoRA config) holding every module of block 0 and none of block 1."""
    root = tmp_path_factory.mktemp("block0")
    sd = {k: v for k, v in load_file(str(source.diffusers)).items() if k.startswith("transformer.blocks.0.")}
    assert len(sd) == 2 * len(MODULE_TYPES)
    save_file(sd, str(root / "diffusers.safetensors"))  # no metadata: nothing says which blocks it targets
    kohya = {}
    for k, v in sd.items():  # written by hand, independent of the package's converter
        mod, kind = re.match(r"transformer\.(.+)\.lora_(A|B)\.weight", k).groups()
        flat = "lora_unet_" + mod.replace(".", "_")
        kohya[f"{flat}.lora_{'down' if kind == 'A' else 'up'}.weight"] = v
        kohya[f"{flat}.alpha"] = torch.tensor(float(v.shape[0] if kind == "A" else v.shape[1]))
    save_file(kohya, str(root / "kohya.safetensors"))
    return root


def assert_coverage_table(msg: str, adapted: str = "0", missing: str = "1") -> None:
    assert "partial coverage: 10 module types are adapted in some blocks but not in others" in msg
    for t in MODULE_TYPES:
        assert re.search(rf"blocks\.N\.{re.escape(t)}\s+{adapted}\s+{missing}\n", msg + "\n"), (t, msg)


@pytest.mark.parametrize("dialect", ["diffusers", "kohya"])
def test_block_zero_of_two_is_partial_and_refused(dialect, block0, new_wan):
    f = block0 / f"{dialect}.safetensors"
    model = new_wan()
    with pytest.raises(AdapterError) as e:
        load_adapter(model, f)
    msg = str(e.value)
    first = msg.splitlines()[0]
    assert first.startswith(f"{f} does not fully match WanTransformer3DModel: 0 missing, 0 unexpected, "
                            "10 module types adapted in only some blocks")
    assert "allow_partial=True (CLI: --allow-partial)" in first
    assert "(blocks: adapter 1, model 2)" in msg
    assert_coverage_table(msg)
    assert e.value.report is not None and not e.value.report.ok
    assert loaded_adapters(model) == set()  # nothing half-loaded
    assert torch.equal(forward(model), forward(new_wan()))

    rep = load_adapter(model, f, allow_partial=True)  # the caller's explicit choice
    assert rep.loaded and len(rep.matched) == 10 and len(rep.coverage) == 10
    assert all(g.adapted == [0] and g.missing == [1] and g.container == "blocks" for g in rep.coverage)
    assert any("partial load (allow_partial=True)" in n for n in rep.notes)
    assert loaded_adapters(model) == {"lorabench"}


def test_cli_refuses_the_partial_file_with_exit_2(block0, tiny_wan, capsys):
    f = block0 / "diffusers.safetensors"
    assert inspect_main([str(f), "--model", str(tiny_wan)]) == 2
    cap = capsys.readouterr()
    assert "10 matched, 0 missing, 0 unexpected, 0 full tensors, 10 module types in only some blocks" in cap.out
    assert cap.err.startswith(f"FAIL: {f} does not fully match WanTransformer3DModel")
    assert_coverage_table(cap.err)
    assert inspect_main([str(f), "--model", str(tiny_wan), "--allow-partial"]) == 0
    capsys.readouterr()
    assert verify_main([str(f), "--model", str(tiny_wan)]) == 2
    assert "10 module types adapted in only some blocks" in capsys.readouterr().err
    assert verify_main([str(f), "--model", str(tiny_wan), "--allow-partial"]) == 0
    assert "OK: the adapter changes the output" in capsys.readouterr().out


def test_some_module_types_in_every_block_is_complete(source, new_wan, tmp_path):
    # Only attention q and v, but in both blocks: a uniform pattern, so complete.
    sd = {k: v for k, v in load_file(str(source.diffusers)).items()
          if re.search(r"\.attn1\.to_(q|v)\.", k)}
    f = tmp_path / "qv.safetensors"
    save_file(sd, str(f))
    rep = load_adapter(new_wan(), f)
    assert rep.ok and rep.loaded and len(rep.matched) == 4 and rep.coverage == []


def test_two_block_adapter_on_a_three_block_model(source, new_wan, tmp_path):
    sd = load_file(str(source.diffusers))
    f = tmp_path / "raw.safetensors"
    save_file(sd, str(f))  # no metadata, so no target list: only the coverage rule can tell
    with pytest.raises(AdapterError) as e:
        load_adapter(new_wan(layers=3), f)
    assert "(blocks: adapter 2, model 3)" in str(e.value)
    assert_coverage_table(str(e.value), adapted="0-1", missing="2")


def test_block_selection_declared_by_the_config_is_not_partial(new_wan, tmp_path):
    """layers_to_transform=[0] says block 0 only on purpose, and the tensors agree: loaded, and said."""
    from peft import LoraConfig, get_peft_model
    pm = get_peft_model(new_wan(), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, layers_to_transform=[0],
                                              layers_pattern="blocks"))
    randomise(pm, seed=5)
    pm.save_pretrained(str(tmp_path / "only0"))
    expected = forward(pm)
    model = new_wan()
    rep = load_adapter(model, tmp_path / "only0")
    assert rep.ok and len(rep.matched) == 10 and rep.coverage == []
    assert any(n.startswith("adapts some module types in only some blocks, as ") and "blocks.N.attn1.to_q in blocks 0"
               in n for n in rep.notes)
    assert torch.equal(forward(model), expected)
    # inspected alone there is no model to compare with: nothing to refuse
    assert inspect_adapter(tmp_path / "only0").refusal() is None


# ----------------------------------------------------------------------------- callers opt in explicitly


def test_generate_refuses_a_partial_adapter_unless_allowed(block0, tiny_wan, tmp_path, capsys):
    from cluster.cli import EXIT_USER_ERROR, main
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    args = ["generate", "--model", str(tiny_wan), "--adapter", str(block0 / "diffusers.safetensors"), "--prompts",
            str(prompts), "--width", "32", "--height", "32", "--frames", "5", "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "10 module types adapted in only some blocks" in err and "Traceback" not in err
    assert not (tmp_path / "refused").exists()  # refused before any sample (or folder) is written
    assert main([*args, "--out", str(tmp_path / "allowed"), "--allow-partial"]) == 0
    assert (tmp_path / "allowed/sample-0000.mp4").is_file()


def test_eval_refuses_a_partial_adapter_unless_its_entry_allows_it(block0, tiny_wan, tmp_path, capsys):
    from cluster.cli import EXIT_USER_ERROR, main
    from tests.conftest import CONFIGS
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    entry = "{path: " + str(block0 / "diffusers.safetensors") + ", name: half"
    common = [f"model.path={tiny_wan}", f"output_dir={tmp_path}", f"prompts.file={prompts}", "reference.shards=null",
              "metrics.enabled=false", "sampling.steps=1", "sampling.frames=5", "--local"]
    code = main(["eval", str(CONFIGS / "eval/tiny-wan.yaml"), "name=refused", f"variants.adapters=[{entry}}}]", *common])
    assert code == EXIT_USER_ERROR
    assert "10 module types adapted in only some blocks" in capsys.readouterr().err
    code = main(["eval", str(CONFIGS / "eval/tiny-wan.yaml"), "name=allowed",
                 f"variants.adapters=[{entry}, allow_partial: true}}]", *common])
    assert code == 0
    assert len(list((tmp_path / "allowed/samples").rglob("*.mp4"))) == 4  # base + adapter, 2 repeats each

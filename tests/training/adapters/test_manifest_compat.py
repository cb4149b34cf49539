"""Field note 3: a checkpoint knows the transformer config it was trained with, and loading it
onto a model whose config differs says which fields differ."""

import json
import shutil

from diffusers import WanTransformer3DModel

from training.adapters import inspect_adapter
from training.trainer import Trainer

from ...conftest import tiny_config


def test_config_difference_is_reported_field_by_field(tiny_wan, video_shards, tmp_path):
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=1",
                      "checkpoint.every_steps=1", "log.tensorboard=false")
    ckpt = Trainer(cfg).run().final_checkpoint
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["base_model"]["transformer_config"]["num_layers"] == 2

    same = inspect_adapter(ckpt, WanTransformer3DModel.from_pretrained(str(tiny_wan / "transformer")))
    assert any("config matches" in n for n in same.notes) and same.ok

    other = tmp_path / "other"
    shutil.copytree(tiny_wan / "transformer", other)
    conf = json.loads((other / "config.json").read_text())
    conf["rope_max_seq_len"] = 64  # same weights, different positional setting
    (other / "config.json").write_text(json.dumps(conf))
    rep = inspect_adapter(ckpt, WanTransformer3DModel.from_pretrained(str(other)))
    note = next(n for n in rep.notes if n.startswith("WARNING"))
    assert "changed: rope_max_seq_len: 32 -> 64" in note
    assert rep.ok  # a warning, not an error: the architecture still matches

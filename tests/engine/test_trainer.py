"""Pieces of the shared training loop that need no process group."""

from mavil.config import load_config
from mavil.engine.trainer import config_changes

from ..conftest import CONFIGS


def test_config_changes_name_each_changed_key_dotted_with_both_values():
    old = load_config(CONFIGS / "tiny" / "stage1.json").to_dict()
    new = load_config(CONFIGS / "tiny" / "stage1.json", ["train.epochs=20", "data.crop_scale=[0.5,1.0]"]).to_dict()
    assert config_changes(old, new) == ["data.crop_scale: [0.2, 1.0] -> [0.5, 1.0]", "train.epochs: 10 -> 20"]
    assert config_changes(old, old) == []
    assert config_changes({"deepspeed": {"bf16": {"enabled": False}}}, {"deepspeed": {}}) == [
        'deepspeed.bf16: {"enabled": false} -> (absent)'
    ]

import json

import pytest

from k25ref.config import KimiK25Config, from_hf, load_config
from k25ref.errors import ConfigError
from k25ref.make_tiny import preset


def test_full_preset_is_the_real_model():
    cfg = from_hf(preset("full"))
    assert cfg == KimiK25Config()                             # the class defaults are the real K2.5


def test_quantization_config_at_top_level_too():
    d = preset("tiny")
    d["quantization_config"] = d["text_config"].pop("quantization_config")
    assert from_hf(d).quant.group_size == 32


def test_rope_parameters_new_form():
    d = preset("tiny")
    old = d["text_config"].pop("rope_scaling")
    d["text_config"]["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 50000.0,
                                           **{k: v for k, v in old.items() if k != "type"}}
    assert from_hf(d).text.rope == from_hf(preset("tiny")).text.rope


def test_transformers_native_vision_keys():
    d = preset("tiny")
    v = d["vision_config"]
    d["vision_config"] = {"hidden_size": v["vt_hidden_size"], "num_hidden_layers": v["vt_num_hidden_layers"],
                          "num_attention_heads": v["vt_num_attention_heads"],
                          "intermediate_size": v["vt_intermediate_size"], "pos_emb_height": 8, "pos_emb_width": 8}
    assert from_hf(d).vision == from_hf(preset("tiny")).vision


@pytest.mark.parametrize("where, key, value, field", [
    ("text_config", "num_attention_heads", 0, "num_attention_heads"),
    ("text_config", "n_group", 3, "n_group"),
    ("text_config", "topk_group", 9, "topk_group"),
    ("text_config", "num_experts_per_tok", 99, "num_experts_per_tok"),
    ("text_config", "qk_rope_head_dim", 7, "qk_rope_head_dim"),
    ("text_config", "hidden_size", "64", "hidden_size"),
    ("text_config", "norm_topk_prob", 1, "norm_topk_prob"),
    ("text_config", "hidden_act", "relu", "hidden_act"),
    ("vision_config", "vt_num_attention_heads", 3, "num_attention_heads"),
])
def test_impossible_config_names_field(where, key, value, field):
    d = preset("tiny")
    d[where][key] = value
    with pytest.raises(ConfigError, match=field):
        from_hf(d)


def test_unknown_quantization_format():
    d = preset("tiny")
    d["text_config"]["quantization_config"]["format"] = "float-quantized"
    with pytest.raises(ConfigError, match="format"):
        from_hf(d)


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ConfigError, match="UTF-8 JSON"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(str(tmp_path))

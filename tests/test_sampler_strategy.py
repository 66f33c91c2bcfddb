import math
from pathlib import Path

import pytest
import yaml

from samplers import Strategy

RELEASED = Path(__file__).resolve().parents[1] / "configs" / "AutoNAT_L-T8_strategy.yaml"


# The released ImprovedNAT configs/AutoNAT_L-T8_strategy.yaml, full float64 precision (rounding to 4 digits moves
# manual_temp by up to 4.6e-4 and manual_cfg by 4.5e-4, so the recipe must carry these exact values).
RELEASED_VALUES = {
    "manual_ratios": [0.9531645174140464, 0.8795409806037042, 0.7940230737075623, 0.745995860948045,
                      0.6249785820461957, 0.407321956652571, 0.260658917067054],
    "manual_temp": [2.404912789740805, 2.477616274962803, 1.191696577294597, 0.7685444738649722,
                    1.0673489052089495, 0.9353720330515827, 0.7843839537838292],
    "manual_samp_temp": [2.8999037830310685, 1.867261830931786, 1.1443729673819831, 1.3796334226014182,
                         1.4699896959810144, 1.3760684112198358, 1.7082165405200722, 0.7133060703601533],
    "manual_cfg": [0.0001, 0.0001, 0.0001, 0.9151274967591447, 1.6160182878189675, 1.1945509026838659,
                   1.38322370140345, 1.22678520936251],
}


def test_released_autonat_L_T8_values_verbatim():
    raw = yaml.safe_load(RELEASED.read_text())
    assert list(raw) == list(RELEASED_VALUES)  # the official key order, nothing else in the file
    for key, want in RELEASED_VALUES.items():
        assert raw[key] == want, key  # exact float equality, not approx
    s = Strategy.from_yaml(RELEASED, gen_steps=8)
    assert s.to_dict() == RELEASED_VALUES


def test_released_autonat_L_T8_counts():
    s = Strategy.from_yaml(RELEASED, gen_steps=8)
    assert s.steps == 8
    # the spec's 4-digit table, as a second, coarser check
    assert s.ratios == pytest.approx([0.9532, 0.8795, 0.7940, 0.7460, 0.6250, 0.4073, 0.2607], abs=1e-4)
    assert s.mask_temp == pytest.approx([2.405, 2.478, 1.192, 0.769, 1.067, 0.935, 0.784], abs=5e-4)
    assert s.samp_temp == pytest.approx([2.900, 1.867, 1.144, 1.380, 1.470, 1.376, 1.708, 0.713], abs=5e-4)
    assert s.cfg == pytest.approx([1e-4, 1e-4, 1e-4, 0.915, 1.616, 1.195, 1.383, 1.227], abs=5e-4)
    assert s.masked_after(256) == [244, 225, 203, 190, 159, 104, 66, 0]
    with pytest.raises(ValueError, match="gen_steps is 12"):
        Strategy.from_yaml(RELEASED, gen_steps=12)


def test_yaml_round_trip_is_exact_and_official_format(tmp_path):
    s = Strategy.enat_cosine(5, cfg_scale=2.5, mask_temp=1.5, samp_temp=6.0)
    out = tmp_path / "sub" / "stp.yaml"
    s.to_yaml(out)
    raw = yaml.safe_load(out.read_text())
    assert list(raw) == ["manual_ratios", "manual_temp", "manual_samp_temp", "manual_cfg"]
    back = Strategy.from_yaml(out, gen_steps=5)
    assert back.to_vector() == s.to_vector()
    assert [p.name for p in out.parent.iterdir()] == ["stp.yaml"]  # no temp file left behind


def test_maskgit_init_matches_the_search_initialisation():
    s = Strategy.maskgit_init(8)
    assert s.ratios == pytest.approx([math.cos(math.pi / 2 * i / 8) for i in range(1, 8)])
    assert s.mask_temp == pytest.approx([1 - i / 8 for i in range(7)])
    assert s.samp_temp == (1.0,) * 8
    assert s.cfg == pytest.approx([i / 8 for i in range(1, 9)])


def test_enat_cosine_schedule():
    s = Strategy.enat_cosine(8, cfg_scale=2.5, mask_temp=1.5, samp_temp=6.0)
    masked = s.masked_after(256)
    assert masked == [251, 236, 212, 181, 142, 97, 49, 0]
    assert [256 - masked[0]] + [a - b for a, b in zip(masked, masked[1:])] == [5, 15, 24, 31, 39, 45, 48, 49]
    assert s.cfg == pytest.approx([i / 8 * 2.5 for i in range(8)]) and s.cfg[0] == 0
    assert s.mask_temp == pytest.approx([1.5 * (1 - (i + 1) / 8) for i in range(7)])
    assert s.samp_temp[0] == pytest.approx(6 * 7 / 8) and s.samp_temp[-1] == 1e-3
    one = Strategy.enat_cosine(1, 1.0, 1.0, 1.0)
    assert one.ratios == () and one.steps == 1


def test_validation_errors_name_the_file_and_key(tmp_path):
    good = Strategy.maskgit_init(4).to_dict()
    cases = {
        "manual_ratios": ([0.9, 0.5], "manual_ratios has 2 values, expected 3"),
        "manual_cfg": ([1, 2, 3], "manual_cfg has 3 values, expected 4"),
    }
    for key, (value, message) in cases.items():
        path = tmp_path / f"{key}.yaml"
        path.write_text(yaml.safe_dump({**good, key: value}))
        with pytest.raises(ValueError, match=f"{path.name}.*{message}"):
            Strategy.from_yaml(path)
    bad = tmp_path / "ratio.yaml"
    bad.write_text(yaml.safe_dump({**good, "manual_ratios": [0.9, 1.0, 0.2]}))
    with pytest.raises(ValueError, match=r"ratio.yaml: manual_ratios must lie in \[0, 1\)"):
        Strategy.from_yaml(bad)
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({k: v for k, v in good.items() if k != "manual_temp"}))
    with pytest.raises(ValueError, match="missing.yaml: missing key.*manual_temp"):
        Strategy.from_yaml(missing)
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({**good, "manual_rat": [0.1]}))
    with pytest.raises(ValueError, match="unknown key.*manual_rat"):
        Strategy.from_yaml(extra)
    with pytest.raises(ValueError, match="cannot read"):
        Strategy.from_yaml(tmp_path / "absent.yaml")
    with pytest.raises(ValueError, match="manual_temp must be >= 0"):
        Strategy(ratios=[0.5], mask_temp=[-1.0], samp_temp=[1, 1], cfg=[0, 0])


def test_vector_form_and_search_clamps():
    s = Strategy.maskgit_init(3)
    assert len(s.to_vector()) == 4 * 3 - 2
    clipped = Strategy.from_vector([1.5, -0.1, 0.0, 2.0, -3.0, 1.0, 1.0, -1.0, 0.5, 0.5], steps=3)
    assert clipped.ratios == (0.99, 0.0)
    assert clipped.mask_temp == (1e-4, 2.0) and clipped.samp_temp == (1e-4, 1.0, 1.0)
    assert clipped.cfg == (1e-4, 0.5, 0.5)
    with pytest.raises(ValueError, match="expected 10 values"):
        Strategy.from_vector([0.0] * 9, steps=3)

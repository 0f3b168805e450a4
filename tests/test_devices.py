"""Every bundled profile loads and validates; broken profiles fail with one line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tap_edge.core.errors import ProfileError, UserError
from tap_edge.devices import DeviceProfile, get_device, list_devices, load_profile

ALL = list_devices()


def test_at_least_twenty_profiles() -> None:
    assert len(ALL) >= 20


@pytest.mark.parametrize("device_id", ALL)
def test_profile_validates(device_id: str) -> None:
    p = get_device(device_id)
    assert isinstance(p, DeviceProfile)
    assert p.id == device_id
    assert p.free_bytes(p.arena_region()) > 0
    assert p.free_bytes(p.weights_region()) > 0
    assert p.sources
    rt = p.runtime()
    assert rt.weight_bits("conv") and rt.activation_bits("conv")


def test_largest_contiguous_region_not_total() -> None:
    h7 = get_device("stm32h743")
    total_sram = sum(m.size for m in h7.memories if "arena" in m.holds)
    assert h7.arena_region().name == "AXI_SRAM"
    assert h7.arena_region().size == 512 * 1024 < total_sram


def test_int8_only_runtime() -> None:
    tpu = get_device("coral-edgetpu").runtime()
    assert tpu.weight_bits("conv") == [8] and tpu.activation_bits("conv") == [8]


def test_cmsis_nn_int4_on_conv_dw_and_per_tensor_fc() -> None:
    """TFLM takes int4 filters on conv and depthwise; on FULLY_CONNECTED only with per-tensor scales
    (fully_connected_common.cc:98), so a plan's per-channel int4 fc is not offered."""
    rt = get_device("stm32h743").runtime("tflm-cmsis-nn")
    for cls in ("conv", "dwconv"):
        assert 4 in rt.weight_bits(cls) and rt.pair_allowed(cls, 4, 8) and not rt.pair_allowed(cls, 4, 16)
    assert 4 not in rt.weight_bits("fc") and 4 not in rt.weight_bits("matmul")
    fc = rt.builtin("FULLY_CONNECTED")
    assert fc is not None and "a8w4" in fc.types and "a8w4" in fc.per_tensor_only


def test_families_give_the_tflm_profiles_one_table_with_sources() -> None:
    """Every TFLite Micro profile takes its op and type support from a family of _runtimes.yaml; each fact that
    refuses a type names a source; the core decides the CMSIS-NN scratch model."""
    seen = {}
    for dev in ALL:
        for rt in get_device(dev).runtimes:
            if rt.name.startswith("tflm"):
                assert rt.family and rt.family.startswith("tflm"), (dev, rt.name)
                assert rt.builtin("CONV_2D") and rt.builtin("DENSIFY") is None and rt.builtin("RANGE") is None
                assert "f16" not in rt.builtin("DEQUANTIZE").types  # dequantize_common.cc:42
                for name, b in rt.builtins.items():
                    assert b.source is None or b.source in rt.sources, name
                seen[dev] = rt.scratch
    assert seen["ek-ra8d1"] == "cmsis-nn-mve" and seen["rp2040"] == "cmsis-nn-c"
    assert seen["stm32h743"] == "cmsis-nn" and seen["esp32-s3"] == "esp-nn"
    lite = get_device("raspberry-pi-5").runtime()
    assert lite.family == "litert" and "f16" in lite.builtin("DEQUANTIZE").types and lite.builtin("DENSIFY")
    assert 16 in lite.weight_bits("conv")


def test_profile_fields_override_the_family(tmp_path: Path) -> None:
    text = GOOD.read_text().replace("    family: tflm-cmsis-nn\n", "    family: tflm-cmsis-nn\n    scratch: none\n")
    rt = load_profile(_write(tmp_path, text)).runtime("tflm-cmsis-nn")
    assert rt.scratch == "none" and rt.family == "tflm-cmsis-nn" and rt.builtin("CONV_2D") is not None


GOOD = Path(__file__).resolve().parents[1] / "device_profiles" / "stm32h743.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "board.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("mutate, field", [
    (lambda t: t.replace("kind: mcu", "kind: toaster"), "kind"),
    (lambda t: t.replace("vendor: STMicroelectronics", "vendor: ST\nfavourite_colour: blue"), "favourite_colour"),
    (lambda t: t.replace("size: 512KB", "size: lots"), "memories"),
    (lambda t: t.replace("region: AXI_SRAM", "region: NOWHERE"), "reserved"),
    (lambda t: t.replace("{region: AXI_SRAM, bytes: 32KB", "{region: AXI_SRAM, bytes: 600KB"), "reserved"),
    (lambda t: t.replace("weights: {default: [8, 32]}", "weights: {default: [8, 33]}"), "runtimes"),
    (lambda t: t.replace("family: tflm-cmsis-nn", "family: tflm-cmsis-nope"), "runtimes.0.family"),
    (lambda t: t.replace("id: stm32h743", "id: Bad Id!"), "id"),
])
def test_bad_profile_names_field(tmp_path: Path, mutate, field: str) -> None:
    p = _write(tmp_path, mutate(GOOD.read_text()))
    with pytest.raises(UserError) as e:
        load_profile(p)
    msg = str(e.value)
    assert str(p) in msg and field in msg and "\n" not in msg


def test_broken_yaml(tmp_path: Path) -> None:
    p = _write(tmp_path, "id: x\nmemories: [unclosed\n")
    with pytest.raises(ProfileError, match="broken YAML at line"):
        load_profile(p)


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "nope.yaml")


def test_user_profile_by_path(tmp_path: Path) -> None:
    text = GOOD.read_text().replace("id: stm32h743", "id: my-board")
    p = _write(tmp_path, text)
    assert get_device(str(p)).id == "my-board"


def test_unknown_device_suggests() -> None:
    with pytest.raises(UserError, match="did you mean stm32h743"):
        get_device("stm32h744")
